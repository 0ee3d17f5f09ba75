"""Training throughput on the tiny preset: the loader's samples/s against what a training step consumes, peak
memory; then a documented memory estimate for Wan 2.1 1.3B / 14B at 81 frames x 480x832 with and without
gradient checkpointing and FSDP.

    uv run python benchmarks/train_step.py --data out/demo [--frames 13] [--steps 6] [--workers 0 2]
    uv run python benchmarks/train_step.py --data out/demo --processes 1 2      # model-train, 1 vs 2 processes
    uv run python benchmarks/train_step.py --data out/demo --loading 1.3B        # peak host RSS of from_wan

`--processes`: samples/s of `model-train` (tiny preset, CPU; 2 processes via configs/accelerate/cpu_ddp.yaml)
from the times its metrics.jsonl lines appear (first step excluded) and the peak RSS of each process.
`--loading`: random Wan weights of that shape saved with diffusers' `save_pretrained` (bf16), then the peak RSS
of a fresh process running `from_wan(..., torch_dtype=bf16)` ("after") and of the previous implementation
(build a random fp32 FactorPortraitTransformer, copy the loaded Wan into it, `.to(bf16)`: "before"), then what
model-train builds per rank: fp32 master weights on rank 0 (and on every DDP rank), and the architecture only
(`build_model(weights=False)`, uninitialised storage never touched) on the other ranks under FSDP's
cpu-RAM-efficient loading, where accelerate's `prepare` broadcasts rank 0's weights into the shards.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def loader_rate(dataset, sampler, collate, batch_size: int, workers: int, batches: int) -> float:
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate
    )
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        batch = next(it)
        n += batch["video"].shape[0] if batch is not None else 0
    return n / (time.perf_counter() - start)


def memory_estimate() -> None:
    """Back-of-envelope training memory per GPU (GiB), batch 1, bf16 autocast with fp32 master weights + AdamW.

    Static: fp32 params (4 B) + fp32 grads (4 B) + AdamW moments (8 B) = 16 B per parameter; FSDP over N GPUs
    divides it by N. Activations per block (bf16, flash attention: no L x L matrix): about 34 * L * D bytes for
    the attention/norm/modulation path plus 4 * L * ffn bytes for the MLP (kept input and GELU output); with
    gradient checkpointing only each block's fp32 input (4 * L * D) is kept, plus one block's full activations
    while it is recomputed. L = 22 latent frames (21 + the reference) x 30 x 52 tokens = 34,320.
    """
    from factorportrait.transformer import WAN_CONFIGS

    tokens = 22 * (480 // 16) * (832 // 16)
    print(f"\nMemory estimate per GPU, 81 frames at 480x832 ({tokens:,} tokens), batch 1 (see docstring):")
    print(
        f"{'model':>6} {'params':>8} {'static':>8} {'act, no ckpt':>13} {'act, ckpt':>10} "
        f"{'total ckpt':>11} {'ckpt + FSDP x8':>15}"
    )
    gib = 2**30
    for name, params in (("1.3B", 1.42e9), ("14B", 14.3e9)):
        c = WAN_CONFIGS[name]
        d, ffn, layers = c["num_attention_heads"] * c["attention_head_dim"], c["ffn_dim"], c["num_layers"]
        per_block = 34 * tokens * d + 4 * tokens * ffn
        static = 16 * params
        act_full = layers * per_block
        act_ckpt = layers * 4 * tokens * d + per_block
        print(
            f"{name:>6} {params / 1e9:>7.2f}B {static / gib:>7.1f}G {act_full / gib:>12.1f}G {act_ckpt / gib:>9.1f}G "
            f"{(static + act_ckpt) / gib:>10.1f}G {(static / 8 + act_ckpt) / gib:>14.1f}G"
        )


def process_rates(data: str, mixture: str, frames: int, steps: int, counts: list[int]) -> None:
    """model-train with 1..N processes: samples/s and peak RSS per process (psutil polling)."""
    import psutil

    config = Path(__file__).resolve().parents[1] / "packages" / "model" / "configs" / "accelerate" / "cpu_ddp.yaml"
    for count in counts:
        out = Path(tempfile.mkdtemp(prefix=f"train_{count}p_"))
        args = ["--stage", "1", "--preset", "tiny", "--data", data, "--mixture", mixture, "--frames", str(frames)]
        args += ["--iterations", str(steps), "--save-every", str(steps), "--output", str(out), "--quiet"]
        if count == 1:
            command = [sys.executable, "-m", "factorportrait.cli.train", *args]
        else:
            accelerate = str(Path(sys.executable).parent / "accelerate")
            command = [accelerate, "launch", "--config_file", str(config), "--num_processes", str(count)]
            command += ["-m", "factorportrait.cli.train", *args]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metrics, seen, peaks = out / "stage1" / "metrics.jsonl", [], {}
        while process.poll() is None:
            lines = metrics.read_text().splitlines() if metrics.exists() else []
            seen += [time.perf_counter()] * (len(lines) - len(seen))
            for child in psutil.Process(process.pid).children(recursive=True) + [psutil.Process(process.pid)]:
                try:
                    if "factorportrait.cli.train" in " ".join(child.cmdline()):
                        peaks[child.pid] = max(peaks.get(child.pid, 0), child.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.02)
        lines = [json.loads(x) for x in metrics.read_text().splitlines()]
        rate = count * (len(seen) - 1) / max(seen[-1] - seen[0], 1e-9) if len(seen) > 1 else float("nan")
        rss = ", ".join(f"{v / 2**30:.2f}" for v in peaks.values())
        print(
            f"{count} process(es) x batch 1: {rate:.2f} samples/s, peak RSS per process {rss} GiB, "
            f"last loss {lines[-1]['loss']:.4f}"
        )


_LOAD = """
import resource, sys, torch
from factorportrait.transformer import FactorPortraitTransformer, load_local_wan
folder, how = sys.argv[1], sys.argv[2]
if how == "after":
    model = FactorPortraitTransformer.from_wan(folder, torch_dtype=torch.bfloat16)
elif how == "trainer-rank0":  # what model-train builds (fp32 master weights) on rank 0, and on every DDP rank
    model = FactorPortraitTransformer.from_wan(folder)
elif how == "trainer-other-ranks":  # FSDP rank-0 loading: the other ranks build the architecture only
    from factorportrait.training.build import _architecture_only

    model = _architecture_only(folder, {})
else:  # the previous from_wan: a random fp32 model next to the loaded Wan, then cast
    wan = load_local_wan(folder, torch_dtype=torch.bfloat16)
    model = FactorPortraitTransformer(wan_config=dict(wan.config))
    state = wan.state_dict()
    weight = state.pop("patch_embedding.weight")
    model.wan.load_state_dict(state, strict=False)
    with torch.no_grad():
        model.wan.patch_embedding.weight[:, : weight.shape[1]].copy_(weight)
    model = model.to(dtype=torch.bfloat16)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
"""


def loading_rss(size: str) -> None:
    from diffusers import WanTransformer3DModel

    from factorportrait.transformer import WAN_CONFIGS

    folder = Path(tempfile.mkdtemp(prefix=f"wan_{size}_"))
    with torch.device("meta"):
        wan = WanTransformer3DModel(**WAN_CONFIGS[size])
    wan = wan.to_empty(device="cpu").to(torch.bfloat16)
    for p in wan.parameters():
        torch.nn.init.normal_(p, std=0.02)
    wan.save_pretrained(folder / "transformer")
    del wan
    for how in ("before", "after", "trainer-rank0", "trainer-other-ranks"):
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, "-c", _LOAD, str(folder), how], capture_output=True, text=True, env=env)
        peak = out.stdout.strip().splitlines()[-1] if out.returncode == 0 else f"failed: {out.stderr[-300:]}"
        print(f"from_wan {size} bf16, {how}: peak host RSS {peak} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="dataset root (e.g. the README's out/demo)")
    parser.add_argument("--mixture", default="DynamicSweep=1")
    parser.add_argument("--frames", type=int, default=13)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--processes", type=int, nargs="+", help="run model-train with these process counts")
    parser.add_argument("--loading", choices=["tiny", "1.3B", "14B"], help="measure from_wan's peak RSS")
    args = parser.parse_args()
    if args.processes:
        process_rates(args.data, args.mixture, 5, max(args.steps, 4), args.processes)
    if args.loading:
        loading_rss(args.loading)
    if args.processes or args.loading:
        return

    from factorportrait.train_config import load_train_config, parse_mixture
    from factorportrait.trainer import build_data, build_model, build_vae, encode_batch, flow_matching_step

    config = load_train_config(
        1,
        None,
        "tiny",
        {
            "data": [args.data],
            "mixture": parse_mixture(args.mixture),
            "frames": args.frames,
            "height": args.size,
            "width": args.size,
        },
    )
    dataset, sampler, collate = build_data(config, 0, 1)
    model, vae = build_model(config), build_vae(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = collate([dataset[i] for i in range(config.batch_size)])
    step_times = []
    for step in range(args.steps + 1):
        start = time.perf_counter()
        latents = encode_batch(vae, batch, "cpu", torch.float32)
        loss = flow_matching_step(
            model, latents, batch, config, torch.Generator().manual_seed(step), "cpu", torch.float32
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step pays for lazy initialisation
            step_times.append(time.perf_counter() - start)
    consumed = config.batch_size / (sum(step_times) / len(step_times))
    print(
        f"tiny preset, {args.frames} frames at {args.size}x{args.size}, batch {config.batch_size}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"training step (VAE encode + forward + backward + AdamW): {consumed:.2f} samples/s")
    for workers in args.workers:
        rate = loader_rate(dataset, sampler, collate, config.batch_size, workers, batches=args.steps)
        print(f"loader with {workers} workers: {rate:.2f} samples/s = {rate / consumed:.2f}x what the step consumes")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    memory_estimate()


if __name__ == "__main__":
    main()
