"""Typed training settings: one TOML file per stage (packages/model/configs/stage{1..4}.toml), CLI overrides.

Defaults are the paper's (Tab. 1, Sec. 5.1; CONVENTIONS 8). Learning rates are missing from the paper text we
have; ours are documented in the stage files.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Paper Tab. 1: dataset mixture, frames and iterations per stage.
STAGES: dict[int, dict[str, Any]] = {
    1: {"mixture": {"PhoneCapture": 1.0}, "frames": 13, "iterations": 20_000, "learning_rate": 2e-5},
    2: {
        "mixture": {"PhoneCapture": 0.6, "StudioCapture": 0.4},
        "frames": 25,
        "iterations": 20_000,
        "learning_rate": 2e-5,
    },
    3: {
        "mixture": {"PhoneCapture": 0.2, "StudioCapture": 0.2, "ViewSweep": 0.3, "DynamicSweep": 0.3},
        "frames": 49,
        "iterations": 20_000,
        "learning_rate": 1e-5,
    },
    4: {
        "mixture": {"PhoneCapture": 0.2, "StudioCapture": 0.2, "ViewSweep": 0.3, "DynamicSweep": 0.3},
        "frames": 81,
        "iterations": 30_000,
        "learning_rate": 5e-6,
    },
}

#: `--preset tiny`: the same code path on a CPU in minutes (tiny random Wan + tiny VAE, small clips).
TINY_PRESET: dict[str, Any] = {
    "model_size": "tiny",
    "height": 32,
    "width": 32,
    "iterations": 6,
    "batch_size": 1,
    "num_workers": 0,
    "save_every": 3,
    "log_every": 1,
    "validate_every": 0,
    "validation_steps": 4,
    "warmup_steps": 2,
    "mixed_precision": "no",
    "gradient_checkpointing": False,
    "learning_rate": 1e-3,
}


#: Fields a resumed run may change (how long, how often it saves / logs / validates, loader workers).
RESUMABLE_CHANGES = frozenset(
    {"iterations", "num_workers", "save_every", "keep_last", "log_every", "validate_every", "validation_steps"}
)


class TrainConfigError(ValueError):
    """A bad training setting; names the file or flag, the field and the value."""


@dataclass
class TrainConfig:
    stage: int = 1
    frames: int = 13
    iterations: int = 20_000
    mixture: dict[str, float] = field(default_factory=lambda: {"PhoneCapture": 1.0})
    data: list[str] = field(default_factory=list)  # dataset roots (each with manifest/)
    output: str = "runs/factorportrait"
    init: str | None = "auto"  # auto: stage 1 from `wan`, stage N from stage N-1's final model
    wan: str | None = None  # local Wan 2.1 T2V diffusers folder (transformer/ and vae/)
    model_size: str = "1.3B"  # 1.3B | 14B | tiny
    prompt_embeds: str | None = None
    expression_mode: str = "codes"  # codes | landmarks (C3 ablation)
    use_normals: bool = True  # False: C2 ablation
    # Scale applied to expression codes at the controller's input when a new controller is built (stage 1 from
    # Wan or a prior); 0 = from the training data: 1 / RMS of the codes' per-dimension standard deviations.
    # A model that already has a controller keeps its own (it is in its config.json).
    expression_code_scale: float = 0.0
    # Condition dropout per sample (paper: none; ours, so that --guidance-scale has an unconditional to contrast):
    # the expression codes replaced by the neutral (zero) code, or in C3 every landmark marked invisible;
    expression_dropout: float = 0.1
    # the reference latent replaced by zeros (off by default);
    reference_dropout: float = 0.0
    # the normal-map latents replaced by those of an all-black "no surface" video (off by default).
    normal_dropout: float = 0.0
    height: int = 480
    width: int = 832
    clip_stride: int = 4
    reference: str = "other_sequence"
    latent_cache: str | None = None
    batch_size: int = 1  # per device
    grad_accum: int = 1
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    warmup_steps: int = 500
    lr_schedule: str = "constant"  # constant | cosine (diffusers' schedules: linear warm-up; cosine ends at 0)
    max_grad_norm: float = 1.0
    ema_decay: float = 0.0  # 0 = no EMA
    mixed_precision: str = "auto"  # auto (bf16 on CUDA) | no | bf16 | fp16
    gradient_checkpointing: bool = True
    sigma_shift: float = 3.0  # CONVENTIONS 7: ~3 at 480p, ~5 at 720p
    timestep_sampling: str = "uniform"  # uniform | logit_normal
    seed: int = 0
    num_workers: int = 4
    save_every: int = 1000
    keep_last: int = 3
    log_every: int = 10
    validate_every: int = 1000  # 0 = off
    validation_steps: int = 20

    def __post_init__(self) -> None:
        self.validate("TrainConfig")

    def validate(self, source: str) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise TrainConfigError(f"{source}: field '{name}' = {getattr(self, name)!r}: {what}")

        need(self.stage in (1, 2, 3, 4), "stage", "must be 1, 2, 3 or 4")
        need(self.frames >= 1 and (self.frames - 1) % 4 == 0, "frames", "must be 1 + 4k (13, 25, 49, 81)")
        need(self.iterations >= 1, "iterations", "must be >= 1")
        need(self.model_size in ("1.3B", "14B", "tiny"), "model_size", "must be 1.3B, 14B or tiny")
        need(self.expression_mode in ("codes", "landmarks"), "expression_mode", "must be codes or landmarks")
        need(
            self.height % 16 == 0 and self.width % 16 == 0 and self.height > 0 and self.width > 0,
            "height",
            "height and width must be positive multiples of 16",
        )
        need(self.reference in ("same_sequence", "other_sequence"), "reference", "same_sequence or other_sequence")
        need(
            isinstance(self.expression_code_scale, int | float)
            and not isinstance(self.expression_code_scale, bool)
            and self.expression_code_scale >= 0,
            "expression_code_scale",
            "a number >= 0 (0: from the training data)",
        )
        for name in ("expression_dropout", "reference_dropout", "normal_dropout"):
            value = getattr(self, name)
            need(
                isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value < 1.0,
                name,
                "must be a probability in [0, 1)",
            )
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.grad_accum >= 1, "grad_accum", "must be >= 1")
        need(self.learning_rate > 0, "learning_rate", "must be > 0")
        need(self.lr_schedule in ("constant", "cosine"), "lr_schedule", "constant or cosine")
        need(0.0 <= self.ema_decay < 1.0, "ema_decay", "must be in [0, 1)")
        need(self.mixed_precision in ("auto", "no", "bf16", "fp16"), "mixed_precision", "auto, no, bf16 or fp16")
        need(self.timestep_sampling in ("uniform", "logit_normal"), "timestep_sampling", "uniform or logit_normal")
        need(self.sigma_shift > 0, "sigma_shift", "must be > 0")
        need(
            bool(self.mixture) and all(v >= 0 for v in self.mixture.values()) and sum(self.mixture.values()) > 0,
            "mixture",
            "needs at least one dataset with a positive ratio",
        )
        need(self.save_every >= 1 and self.keep_last >= 1, "save_every", "save_every and keep_last must be >= 1")

    @property
    def output_dir(self) -> Path:
        return Path(self.output) / f"stage{self.stage}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def differences(self, saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """{field: (saved, now)} for the fields that must match when a run resumes (RESUMABLE_CHANGES may differ)."""
        now = self.to_dict()
        return {
            name: (saved.get(name), value)
            for name, value in now.items()
            if name not in RESUMABLE_CHANGES and saved.get(name) != value
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainConfigError(f"{source}: unknown field(s) {unknown} (known: {', '.join(sorted(known))})")
        try:
            config = cls(**data)
        except TrainConfigError as err:
            raise TrainConfigError(str(err).replace("TrainConfig", source)) from err
        except TypeError as err:
            raise TrainConfigError(f"{source}: {err}") from err
        return config


def stage_defaults(stage: int) -> dict[str, Any]:
    if stage not in STAGES:
        raise TrainConfigError(f"--stage must be 1, 2, 3 or 4, got {stage}")
    return {"stage": stage, **STAGES[stage]}


def load_train_config(
    stage: int, path: str | Path | None = None, preset: str | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Stage defaults <- config file <- preset <- non-None overrides."""
    data = stage_defaults(stage)
    source = f"stage {stage} defaults"
    if path is not None:
        path = Path(path)
        try:
            file_data = tomllib.loads(path.read_text())
        except FileNotFoundError as err:
            raise TrainConfigError(f"config file '{path}' does not exist") from err
        except tomllib.TOMLDecodeError as err:
            raise TrainConfigError(f"{path}: not valid TOML ({err})") from err
        if file_data.get("stage", stage) != stage:
            raise TrainConfigError(f"{path}: field 'stage' = {file_data['stage']} but --stage is {stage}")
        data.update(file_data)
        source = str(path)
    if preset == "tiny":
        data.update(TINY_PRESET)
    elif preset is not None:
        raise TrainConfigError(f"--preset must be 'tiny', got {preset!r}")
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    data.update(given)
    return TrainConfig.from_dict(data, source=source + (" + command line" if given else ""))


def parse_mixture(text: str) -> dict[str, float]:
    """'ViewSweep=0.3,DynamicSweep=0.7' -> {'ViewSweep': 0.3, 'DynamicSweep': 0.7}."""
    mixture: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            mixture[name.strip()] = float(value)
        except ValueError:
            raise TrainConfigError(
                f"--mixture: '{part}' is not NAME=RATIO (e.g. ViewSweep=0.3,DynamicSweep=0.7)"
            ) from None
    return mixture
