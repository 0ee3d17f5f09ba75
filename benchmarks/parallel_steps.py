"""Why the CPU reproduction runs its independent steps in worker processes (reproduction/workers.py): the
throughput of the cpu preset's training steps in one process with 2 intra-op threads (the baseline), in one
process with 1 thread, and in two 1-thread worker processes side by side (the `step_parallel = 2` path).

    uv run python benchmarks/parallel_steps.py [--steps 20] [--preset cpu]

Steps are self-contained, on random inputs of the cpu preset's shapes: a Full fine-tuning step (DiT of the
preset with every condition, batch `train_batch`, the last stage's frames, forward + backward + AdamW) and a VAE
training step (`AutoencoderKLWan` of the preset, batch `vae_batch` x `vae_frames` frames of `vae_crop` px).
Prints steps/s per setting and the ratio against the baseline. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import time


def _dit_step_rate(preset: str, steps: int, threads: int) -> float:
    import torch
    from diffusers import WanTransformer3DModel

    from factorportrait.cameras import latent_frame_count
    from factorportrait.reproduction.config import load_repro_config
    from factorportrait.reproduction.prior import dit_config
    from factorportrait.transformer import RAY_CHANNELS, FactorPortraitTransformer

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = load_repro_config(preset)
    model = FactorPortraitTransformer.from_wan(WanTransformer3DModel(**dit_config(config)))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, t = config.train_batch, config.stage_frames[-1]
    f, s = latent_frame_count(t), config.resolution // 8
    inputs = dict(
        latents=torch.randn(b, 16, f, s, s),
        timestep=torch.rand(b) * 1000,
        reference_latent=torch.randn(b, 16, 1, s, s),
        normal_latents=torch.randn(b, 16, f, s, s),
        ray_features=torch.randn(b, RAY_CHANNELS, f, s, s),
        reference_rays=torch.randn(b, RAY_CHANNELS, 1, s, s),
        expression_codes=torch.randn(b, t, 128),
    )

    def step() -> None:
        out = model(**inputs, return_dict=False)[0]
        loss = out.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # first-call allocations are not throughput
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def _vae_step_rate(preset: str, steps: int, threads: int) -> float:
    import torch
    from diffusers import AutoencoderKLWan

    from factorportrait.reproduction.config import load_repro_config
    from factorportrait.reproduction.vae_train import vae_config

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = load_repro_config(preset)
    model = AutoencoderKLWan(**vae_config(config))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    side = config.vae_crop or config.resolution
    x = torch.rand(config.vae_batch, 3, config.vae_frames, side, side) * 2 - 1

    def step() -> None:
        recon = model.decode(model.encode(x).latent_dist.sample()).sample
        loss = (recon - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--preset", default="cpu")
    args = parser.parse_args()

    from concurrent.futures import ThreadPoolExecutor

    from factorportrait.reproduction.workers import Workers

    print(f"{'step':>5} {'setting':<34} {'steps/s':>8} {'vs baseline':>12}")
    with Workers(parallel=2, threads=2) as workers:
        for name, rate in (("dit", _dit_step_rate), ("vae", _vae_step_rate)):
            base = workers.call(rate, args.preset, args.steps, 2)  # one at a time: the machine to itself
            one = workers.call(rate, args.preset, args.steps, 1)
            with ThreadPoolExecutor(2) as pool:
                pair = list(pool.map(lambda _, r=rate: workers.call(r, args.preset, args.steps, 1), range(2)))
            rows = (
                ("1 process x 2 threads (baseline)", base),
                ("1 process x 1 thread", one),
                ("2 processes x 1 thread, together", sum(pair)),
            )
            for setting, value in rows:
                print(f"{name:>5} {setting:<34} {value:>8.2f} {value / base:>11.2f}x")


if __name__ == "__main__":
    main()
