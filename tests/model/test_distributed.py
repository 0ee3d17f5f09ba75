"""model-train with 2 processes on the CPU (accelerate launch, gloo): DDP and FSDP2 give the numbers of one
process with the same global batch, a SIGKILLed FSDP run resumes exactly, its final/ is one consolidated folder.

Expectation: 2 processes x batch 1 see exactly the samples and the noise of 1 process x batch 2 (per-sample
noise keyed by the global stream index), so the losses agree up to float summation order (batched VAE and
model calls vs single ones, gloo's all-reduce): ~1e-7 relative in float32; we allow 1e-5. The weights after a few
AdamW steps agree to ~1e-4 (Adam divides by sqrt(v): a gradient difference at round-off level on a near-zero
gradient moves a weight by a fraction of lr = 1e-3), so they are compared at 1e-3 = one step's bound.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from factorportrait.train_config import load_train_config
from factorportrait.trainer import train

pytestmark = pytest.mark.distributed

CONFIGS = Path(__file__).resolve().parents[2] / "packages" / "model" / "configs" / "accelerate"
ARGS = ["--stage", "1", "--preset", "tiny", "--mixture", "DynamicSweep=1", "--frames", "5", "--save-every", "2"]
BASE_LR, WARMUP = 1e-3, 2  # the tiny preset's


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config: str, data: Path, output: Path, iterations: int, *extra: str, wait: bool = True):
    accelerate = Path(sys.executable).parent / "accelerate"
    command = [str(accelerate), "launch", "--config_file", str(CONFIGS / config), "--main_process_port"]
    command += [str(_free_port()), "-m", "factorportrait.cli.train", *ARGS, "--data", str(data)]
    command += ["--output", str(output), "--iterations", str(iterations), "--quiet", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    if not wait:
        return process
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out[-4000:]
    return out


def _metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "stage1" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tiny_dataset, tmp_path_factory):
    """One process, batch 2, 8 steps: the numbers every 2-process run must reproduce."""
    output = tmp_path_factory.mktemp("one_process")
    config = load_train_config(
        1,
        None,
        "tiny",
        dict(
            data=[str(tiny_dataset)],
            output=str(output),
            mixture={"DynamicSweep": 1.0},
            frames=5,
            batch_size=2,
            iterations=6,
            save_every=2,
        ),
    )
    return train(config, progress=False), output


@pytest.fixture(scope="module")
def fsdp_killed_and_resumed(tiny_dataset, tmp_path_factory):
    """A 2-process FSDP run SIGKILLed after its first checkpoint, then resumed to step 6."""
    output = tmp_path_factory.mktemp("fsdp")
    checkpoints = output / "stage1" / "checkpoints"
    process = _launch("cpu_fsdp.yaml", tiny_dataset, output, 1000, wait=False)
    try:
        deadline = time.time() + 240
        while not any(checkpoints.glob("checkpoint-*/step.json")) and process.poll() is None:
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
    finally:
        # The launcher and both workers (torchrun puts them in their own sessions), mid-training.
        for child in [*psutil.Process(process.pid).children(recursive=True), psutil.Process(process.pid)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    killed_at = max(int(p.parent.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*/step.json"))
    before = _metrics(output)
    log = _launch("cpu_fsdp.yaml", tiny_dataset, output, killed_at + 2, "--resume")
    return output, killed_at, before, log


def test_ddp_two_processes_match_one_process(reference, tiny_dataset, tmp_path):
    result, _ = reference
    log = _launch("cpu_ddp.yaml", tiny_dataset, tmp_path, 4)
    assert "global batch 2 = 1 per device x 2 processes x 1 accumulation" in log
    metrics = _metrics(tmp_path)
    assert [m["loss"] for m in metrics] == pytest.approx(result.losses[:4], rel=1e-5)
    # The LR is a function of optimiser steps: linear warm-up over 2 steps, whatever the process count.
    assert [m["lr"] for m in metrics] == pytest.approx([BASE_LR * min(1.0, k / WARMUP) for k in range(4)], abs=1e-12)


def test_fsdp_resumes_exactly_after_sigkill(reference, fsdp_killed_and_resumed):
    output, killed_at, before, log = fsdp_killed_and_resumed
    assert f"steps {killed_at} -> {killed_at + 2}" in log
    metrics = _metrics(output)
    # The losses logged before the kill and those of the resumed steps are the uninterrupted run's.
    resumed = metrics[-2:]  # appended by the resumed run (the killed run's later steps precede them)
    assert [m["step"] for m in resumed] == [killed_at + 1, killed_at + 2]
    expected = reference[0].losses  # 1 process x batch 2, uninterrupted
    if killed_at + 2 <= len(expected):
        assert [m["loss"] for m in resumed] == pytest.approx(expected[killed_at : killed_at + 2], rel=1e-5)
    n = min(len(before), len(expected))
    assert [m["loss"] for m in before[:n]] == pytest.approx(expected[:n], rel=1e-5)
    assert [m["lr"] for m in resumed] == pytest.approx([BASE_LR] * 2)
    assert not list((output / "stage1" / "checkpoints").glob(".tmp-*"))  # the killed save was cleaned up


def test_fsdp_final_is_consolidated_and_loads_in_one_process(reference, fsdp_killed_and_resumed):
    from accelerate.utils import merge_fsdp_weights
    from safetensors.torch import load_file

    from factorportrait.transformer import FactorPortraitTransformer

    output, killed_at, _, _ = fsdp_killed_and_resumed
    final = output / "stage1" / "final"
    model = FactorPortraitTransformer.from_pretrained(final)
    state = model.state_dict()
    # accelerate's own consolidation of the last (sharded) checkpoint: the same weights, bit for bit
    merged = output / "merged"
    checkpoint = output / "stage1" / "checkpoints" / f"checkpoint-{killed_at + 2:08d}" / "pytorch_model_fsdp_0"
    merge_fsdp_weights(str(checkpoint), str(merged), safe_serialization=True)
    shards = load_file(str(merged / "model.safetensors"))
    assert set(shards) <= set(state) and len(shards) >= len(list(model.parameters()))
    for name, tensor in shards.items():
        assert torch.equal(state[name], tensor), name
    if killed_at + 2 == 8:  # and the weights one process trains with the same global batch
        one = FactorPortraitTransformer.from_pretrained(reference[1] / "stage1" / "final").state_dict()
        for name, tensor in one.items():
            torch.testing.assert_close(state[name], tensor, atol=1e-3, rtol=0)


def test_fsdp_ranks_other_than_0_read_no_weights(tiny_dataset, tmp_path):
    """With cpu-RAM-efficient loading (cpu_fsdp.yaml) rank 1 builds the architecture from config.json only and
    gets rank 0's weights from accelerate's broadcast: the 2-process losses from a saved model equal 1 process's."""
    from factorportrait.transformer import FactorPortraitTransformer

    init = tmp_path / "init"
    model = FactorPortraitTransformer.tiny(seed=3, expression_code_scale=7.0)
    with torch.no_grad():  # non-zero condition weights, so that every input reaches the loss
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(init)
    log = _launch("cpu_fsdp.yaml", tiny_dataset, tmp_path / "two", 3, "--init", str(init))
    assert "rank 1: read no weights" in log and "rank 0: read no weights" not in log
    one = load_train_config(
        1,
        None,
        "tiny",
        dict(
            data=[str(tiny_dataset)],
            output=str(tmp_path / "one"),
            mixture={"DynamicSweep": 1.0},
            frames=5,
            batch_size=2,
            iterations=3,
            save_every=2,
            init=str(init),
        ),
    )
    expected = train(one, progress=False).losses
    assert [m["loss"] for m in _metrics(tmp_path / "two")] == pytest.approx(expected, rel=1e-5)
