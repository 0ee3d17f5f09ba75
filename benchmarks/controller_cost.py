"""What the expression controller costs (paper Sec. 4.2: "minimal compute"), in one run:

1. parameters and forward time added by the AdaLN expression controller, relative to the plain Wan forward
   (same model, shared modulation) and to the C3 variant (landmark encoder + added cross-attention per block),
   for the Wan 2.1 1.3B configuration: at a reduced token count on CPU, at full size (81 frames, 480x832) on CUDA;
2. the memory of the AdaLN modulation kept per latent frame [B, F, 6, D] versus per token [B, L, 6, D] at
   21 latent frames (+1 reference) x 480x832, for the 1.3B and 14B configurations.

    uv run python benchmarks/controller_cost.py [--frames 17] [--size 64 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from factorportrait.cameras import latent_frame_count
from factorportrait.landmarks import FrameCrossAttention, LandmarkEncoder, group_landmarks_by_latent_frame
from factorportrait.transformer import RAY_CHANNELS, WAN_CONFIGS, FactorPortraitTransformer


def count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def modulation_bytes(config: dict, latent_frames: int, height: int, width: int, batch: int = 1) -> tuple[int, int]:
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    tokens = latent_frames * (height // 16) * (width // 16)
    return batch * latent_frames * 6 * dim * 4, batch * tokens * 6 * dim * 4  # fp32


def timed(fn, repeats: int, cuda: bool) -> float:
    fn()
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="1.3B", choices=sorted(WAN_CONFIGS))
    parser.add_argument("--frames", type=int, default=None, help="video frames (1+4k); default 81 on CUDA, 9 on CPU")
    parser.add_argument("--size", type=int, nargs=2, default=None, help="pixels H W; default 480 832 CUDA, 64 64 CPU")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    frames = args.frames or (81 if cuda else 9)
    height, width = args.size or ((480, 832) if cuda else (64, 64))
    torch.manual_seed(0)

    config = WAN_CONFIGS[args.config]
    model = FactorPortraitTransformer(wan_config=config).to(device=device).eval()
    if dtype != torch.float32:
        model = model.to(dtype=dtype)  # bf16 on CUDA: what training and inference use
    dim = model.inner_dim
    landmark_encoder = LandmarkEncoder(dim=128).to(device=device, dtype=dtype)
    landmark_attn = torch.nn.ModuleList(
        FrameCrossAttention(dim, 128, config["num_attention_heads"]) for _ in range(config["num_layers"])
    ).to(device=device, dtype=dtype)
    # zero-initialised modules add nothing; give them values so the timed work is the real work
    for module in (model.controller, landmark_attn):
        for p in module.parameters():
            torch.nn.init.normal_(p, std=0.02)

    f_lat, h, w = latent_frame_count(frames), height // 8, width // 8
    x = dict(
        latents=torch.randn(1, 16, f_lat, h, w),
        reference_latent=torch.randn(1, 16, 1, h, w),
        normal_latents=torch.randn(1, 16, f_lat, h, w),
        ray_features=torch.randn(1, RAY_CHANNELS, f_lat, h, w),
    )
    x = {k: v.to(device=device, dtype=dtype) for k, v in x.items()}
    fused = model.fuse_inputs(**x)
    timestep = torch.tensor([500.0], device=device)
    codes = torch.randn(1, frames, 128, device=device, dtype=dtype)
    landmarks = torch.rand(1, frames, 238, 2, device=device, dtype=dtype) * 2 - 1
    tokens = fused.shape[2] * (h // 2) * (w // 2)

    with torch.no_grad():

        def plain():
            return model.denoise(fused, timestep)

        def adaln():
            return model.denoise(fused, timestep, frame_offsets=model.controller(codes))

        def cross_attention():
            context = group_landmarks_by_latent_frame(landmark_encoder(landmarks))
            model.landmark_attn = landmark_attn
            try:
                return model.denoise(fused, timestep, landmark_context=context)
            finally:
                model.landmark_attn = None

        t_plain, t_adaln, t_cross = (timed(fn, args.repeats, cuda) for fn in (plain, adaln, cross_attention))

    base = count(model.wan)
    print(
        f"Wan 2.1 {args.config} ({'CUDA bf16' if cuda else 'CPU fp32'}), {frames} frames at {height}x{width}: "
        f"{tokens} tokens incl. the reference frame"
    )
    print(f"{'variant':<34} {'params added':>14} {'% of Wan':>9} {'forward s':>10} {'time vs plain':>14}")
    rows = [
        ("plain Wan forward (shared AdaLN)", 0, t_plain),
        ("AdaLN expression controller", count(model.controller), t_adaln),
        ("C3 landmarks + cross-attention", count(landmark_encoder) + count(landmark_attn), t_cross),
    ]
    for name, params, seconds in rows:
        print(f"{name:<34} {params:>14,} {100 * params / base:>8.2f}% {seconds:>10.3f} {seconds / t_plain:>13.3f}x")
    print(
        f"controller vs C3: {count(model.controller) / rows[2][1]:.2f}x the parameters, "
        f"{(t_adaln - t_plain) / max(t_cross - t_plain, 1e-9):.2f}x the added time"
    )
    print(f"(the widened patch embedding for normals + rays adds {16 * 4 * dim + RAY_CHANNELS * 4 * dim:,} parameters)")

    print("\nAdaLN modulation memory at 21 latent frames (+1 reference) x 480x832, fp32, batch 1:")
    for name in ("1.3B", "14B"):
        per_frame, per_token = modulation_bytes(WAN_CONFIGS[name], 22, 480, 832)
        print(
            f"  {name:>5}: per frame {per_frame / 2**20:8.2f} MiB   per token {per_token / 2**30:6.2f} GiB   "
            f"({per_token / per_frame:,.0f}x)"
        )


if __name__ == "__main__":
    main()
