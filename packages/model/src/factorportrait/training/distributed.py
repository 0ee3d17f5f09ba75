"""accelerate set-up for training on 1..N processes (DDP or FSDP2), and exporting a consolidated `final/`.

What we rely on (accelerate >= 1.10, torch >= 2.6): `Accelerator.prepare` of (model, optimiser) together,
FSDP2 (`fsdp_version: 2`, `fully_shard` per `_no_split_modules` block), `save_state` / `load_state` with
`register_for_checkpointing`, `get_state_dict` (a full state dict on the main process under FSDP), `gather`,
`accumulate`, `clip_grad_norm_`. The dataloader and the LR scheduler are NOT prepared: the mixture sampler
already yields each rank's share, and a prepared scheduler steps `num_processes` times per optimiser step.

CPU (tests, no GPU): the same configs run with `gloo` (the trainer passes `cpu=True` when CUDA is missing).
accelerate 1.15 only turns on FSDP for GPU-like backends (`AcceleratorState` leaves a MULTI_CPU run without
its FSDP plugin), so on CPU the trainer switches the state to FSDP itself; torch's `fully_shard` works on
CPU / gloo.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch

from .config import TrainConfig

log = logging.getLogger("factorportrait.train")


def make_accelerator(config: TrainConfig):
    """The run's Accelerator (mixed precision, gradient accumulation, TensorBoard); writes nothing."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    precision = config.mixed_precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() else "no"
    out = config.output_dir
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=precision,
        gradient_accumulation_steps=config.grad_accum,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )
    _fsdp_on_cpu(accelerator)
    return accelerator


def _fsdp_on_cpu(accelerator) -> None:
    """Under `accelerate launch` with an FSDP config on a machine without GPUs, use FSDP over gloo anyway."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    plugin = getattr(accelerator.state, "fsdp_plugin", None) or FullyShardedDataParallelPlugin()  # from the env
    PartialState().distributed_type = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def rank0_loads_weights(accelerator) -> bool:
    """True under FSDP with `fsdp_cpu_ram_efficient_loading: true`: accelerate's `prepare` broadcasts rank 0's
    full state dict into every rank's shards, so the other ranks need the architecture only, not the weights."""
    from accelerate.utils import DistributedType

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    return (
        accelerator.distributed_type == DistributedType.FSDP
        and plugin is not None
        and bool(getattr(plugin, "cpu_ram_efficient_loading", False))
    )


def match_dtypes(accelerator, model: torch.nn.Module) -> None:
    """Collective: give every rank's parameters and buffers the dtypes they have on rank 0 (accelerate's broadcast
    allocates each rank's receive buffer in that rank's own dtype, so they must agree)."""
    from accelerate.utils import broadcast_object_list

    tensors = dict([*model.named_parameters(), *model.named_buffers()])
    names = [{name: str(t.dtype).removeprefix("torch.") for name, t in tensors.items()}]
    broadcast_object_list(names, from_process=0)
    for name, dtype in names[0].items():
        tensor = tensors.get(name)
        if tensor is not None and str(tensor.dtype).removeprefix("torch.") != dtype:
            tensor.data = tensor.data.to(getattr(torch, dtype))


def compute_dtype(accelerator) -> torch.dtype:
    precision = accelerator.mixed_precision
    return torch.bfloat16 if precision == "bf16" else torch.float16 if precision == "fp16" else torch.float32


def export_final(accelerator, model, ema, folder: Path, training: dict) -> None:
    """Collective: the stage's consolidated diffusers folder (EMA weights when kept), written by the main process
    into a temp folder and renamed. Loads with `FactorPortraitTransformer.from_pretrained` in one process."""
    from diffusers.utils import SAFETENSORS_WEIGHTS_NAME
    from safetensors.torch import save_file

    params = list(model.parameters())
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    state = accelerator.get_state_dict(model)  # full on the main process, also under FSDP
    if ema is not None:
        ema.restore(params)
    if accelerator.is_main_process:
        folder = Path(folder)
        tmp = folder.with_name(f".tmp-{folder.name}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        accelerator.unwrap_model(model).save_config(tmp)
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
        save_file(tensors, tmp / SAFETENSORS_WEIGHTS_NAME, metadata={"format": "pt"})
        (tmp / "training.json").write_text(json.dumps(training, indent=2))
        if folder.exists():
            old = folder.with_name(f".tmp-old-{folder.name}")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(folder, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, folder)
    accelerator.wait_for_everyone()
