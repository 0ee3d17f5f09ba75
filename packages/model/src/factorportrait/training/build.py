"""Building a stage's parts from its TrainConfig: starting point, model, VAE, data (no side effects on disk)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from .config import TrainConfig

log = logging.getLogger("factorportrait.train")

#: Written into every `final/`: what the stage trained and where its VAE came from.
TRAINING_FILE = "training.json"


def resolve_init(config: TrainConfig) -> str | None:
    """What the stage starts from: a FactorPortrait folder, a Wan folder (stage 1), or None (tiny random)."""
    if config.init not in (None, "auto"):
        return config.init
    if config.stage == 1:
        if config.model_size == "tiny":
            return None
        if config.wan is None:
            raise FileNotFoundError(
                "stage 1 starts from Wan 2.1 T2V weights: pass --wan PATH (a local diffusers "
                "folder such as Wan2.1-T2V-1.3B-Diffusers) or --preset tiny"
            )
        return config.wan
    previous = Path(config.output) / f"stage{config.stage - 1}" / "final"
    if not (previous / "config.json").exists():
        raise FileNotFoundError(
            f"stage {config.stage} starts from stage {config.stage - 1}'s final model, but "
            f"'{previous}' has none: run `model-train --stage {config.stage - 1}` first or "
            "pass --init PATH"
        )
    return str(previous)


def _is_factorportrait(folder: str | Path) -> bool:
    config = Path(folder) / "config.json"
    return config.exists() and "wan_config" in json.loads(config.read_text())


def build_model(
    config: TrainConfig, landmark_layout: tuple[str, int] | None = None, dataset=None, weights: bool = True
):
    """The stage's transformer; `landmark_layout` = (name, K) of the training data's landmarks (C3 only).

    `weights=False` reads no weights, only config.json: the same modules with uninitialised parameters
    (`torch.empty`: pages never written are never resident) and real buffers. That is what the ranks other than 0
    build under FSDP's cpu-RAM-efficient loading, where accelerate broadcasts rank 0's weights into the shards
    (`distributed.rank0_loads_weights`); the caller then matches rank 0's dtypes (`distributed.match_dtypes`).

    A new expression controller (a model built from Wan or at random) gets `config.expression_code_scale`, or
    with 0 the scale of `dataset`'s codes (`training_code_scale`); a FactorPortrait model keeps its own.

    The saved config records the condition dropout of this stage and, for C3, the landmark layout; a model
    trained on another layout is refused (ValueError naming both).
    """
    from ..transformer import WAN_CONFIGS, FactorPortraitTransformer

    init = resolve_init(config)
    options = dict(expression_mode=config.expression_mode, use_normals=config.use_normals)
    if config.expression_mode == "landmarks":
        if landmark_layout is None:
            raise ValueError("expression_mode = 'landmarks' needs the training data's landmark layout")
        options.update(landmark_layout=landmark_layout[0], num_landmarks=landmark_layout[1])
    fresh = init is None or not _is_factorportrait(init)
    if fresh and config.expression_mode == "codes":
        scale = config.expression_code_scale or (training_code_scale(dataset) if dataset is not None else 1.0)
        options.update(expression_code_scale=scale)
        log.info("expression code scale %.4g (%s)", scale, "config" if config.expression_code_scale else "data")
    if init is None:
        model = FactorPortraitTransformer.tiny(seed=config.seed, **options)
    elif not weights:
        model = _architecture_only(init, options)
    elif _is_factorportrait(init):
        model = FactorPortraitTransformer.from_pretrained(init)
        if landmark_layout is not None and model.landmark_encoder is not None:
            model.check_landmark_layout(*landmark_layout, where=f"training data of stage {config.stage}")
            model.register_to_config(landmark_layout=landmark_layout[0])
    else:
        model = FactorPortraitTransformer.from_wan(init, **options)
        if WAN_CONFIGS.get(config.model_size, {}).get("num_layers") not in (None, model.wan.config.num_layers):
            log.warning(
                "model_size=%s but the Wan folder holds %d layers", config.model_size, model.wan.config.num_layers
            )
    model.register_to_config(
        expression_dropout=config.expression_dropout,
        reference_dropout=config.reference_dropout,
        normal_dropout=config.normal_dropout,
    )
    if config.prompt_embeds:
        model.set_prompt_embedding(config.prompt_embeds)
    if config.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def _architecture_only(init: str, options: dict):
    """The model `init` holds, built from its config.json alone (see build_model's `weights=False`)."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from ..transformer import _ADOPT_WAN, FactorPortraitTransformer

    with init_empty_weights(include_buffers=False):  # parameters on the meta device, buffers computed for real
        if _is_factorportrait(init):
            model = FactorPortraitTransformer.from_config(FactorPortraitTransformer.load_config(init))
        else:
            root = Path(init)
            folder = root / "transformer" if (root / "transformer" / "config.json").exists() else root
            wan = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(folder))
            token = _ADOPT_WAN.set(wan)
            try:
                model = FactorPortraitTransformer(wan_config=dict(wan.config), **options)
            finally:
                _ADOPT_WAN.reset(token)
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and param.is_meta:
                empty = torch.empty(param.shape, dtype=param.dtype, device="cpu")
                module._parameters[name] = torch.nn.Parameter(empty, requires_grad=param.requires_grad)
    return model


def training_code_scale(dataset) -> float:
    """`expression.code_scale_of` over every frame of the dataset's sequences (a latent-cached dataset's too)."""
    from ..expression import code_scale_of

    sources = getattr(getattr(dataset, "dataset", dataset), "sources", [])
    if not sources:
        return 1.0
    return code_scale_of(torch.from_numpy(np.concatenate([s.expression for s in sources]).astype(np.float32)))


def vae_source(config: TrainConfig) -> str | None:
    """Where the stage's VAE comes from: `--wan`, else what the starting model's `final/training.json` recorded,
    else a `vae/` folder next to the starting model; None for the tiny preset. FileNotFoundError otherwise."""
    if config.model_size == "tiny":
        return None
    if config.wan is not None:
        return config.wan
    init = resolve_init(config)
    record = Path(init) / TRAINING_FILE if init else None
    if record is not None and record.exists():
        recorded = json.loads(record.read_text()).get("vae")
        if recorded:
            return recorded
    if init and (Path(init) / "vae" / "config.json").exists():
        return init
    raise FileNotFoundError(
        f"stage {config.stage} needs the Wan VAE: '{init}' records none ({record} has no 'vae') and holds no "
        "vae/ folder: pass --wan PATH (the Wan 2.1 diffusers folder with vae/)"
    )


def build_vae(config: TrainConfig):
    from ..vae import WanVideoVAE

    source = vae_source(config)
    if source is None:
        return WanVideoVAE.tiny(seed=config.seed)
    return WanVideoVAE.from_pretrained(source)


def build_dataset(config: TrainConfig):
    """The stage's clips over every dataset root, broken sources removed (latent cache applied if configured)."""
    from ..data.clips import ClipDataset, ClipDatasetConfig
    from ..data.manifest import read_manifest_rows

    if not config.data:
        raise FileNotFoundError(
            "no training data: pass --data ROOT (a dataset folder with manifest/) or set `data` in the stage config"
        )
    sources = []
    for root in config.data:
        rows = read_manifest_rows(root)
        if not rows:
            raise ValueError(
                f"dataset folder '{root}': its manifest has 0 rows (no sequences were written there, or every "
                "row was malformed): render or copy data into it, or leave it out of --data"
            )
        sources.extend(rows)
    dataset = ClipDataset(
        sources,
        ClipDatasetConfig(
            frames=config.frames,
            stride=config.clip_stride,
            height=config.height,
            width=config.width,
            reference=config.reference,
            seed=config.seed,
            landmarks=config.expression_mode == "landmarks",
            ray_features=False,  # built on the training device inside the step (training.step.batch_rays)
        ),
    )
    broken = dataset.check_sources()
    if broken:
        log.warning("skipped %d broken sequences (see above)", broken)
    if config.latent_cache:
        from ..data.latent_cache import CachedClipDataset, LatentCache

        dataset = CachedClipDataset(dataset, LatentCache(config.latent_cache))
    return dataset


def build_data(config: TrainConfig, rank: int, world_size: int):
    """Dataset, mixture sampler (the stage's ratios; this rank's share) and collate function."""
    from ..data.clips import collate_clips, group_by_dataset
    from ..data.mixture import MixtureSampler

    dataset = build_dataset(config)
    sampler = MixtureSampler(
        group_by_dataset(dataset.clips), config.mixture, seed=config.seed, rank=rank, world_size=world_size
    )
    return dataset, sampler, collate_clips


def make_loader(dataset, sampler, collate, config: TrainConfig):
    """This rank's loader. Not `accelerator.prepare`d: the mixture sampler already yields this rank's share."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        num_workers=config.num_workers,
        collate_fn=collate,
        persistent_workers=config.num_workers > 0,
        timeout=600 if config.num_workers else 0,
    )
