"""Typed settings of the CPU-scale reproduction (issue 15): one TOML preset per size, `--set key=value` overrides.

Presets live in packages/model/configs/reproduction/{micro,cpu,gpu}.toml. Every field has a default here so a
preset only states what differs; unknown keys are refused with the file and key named.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESET_DIR = Path(__file__).resolve().parents[3] / "configs" / "reproduction"
PRESETS = ("micro", "cpu", "gpu")
VARIANTS = ("full", "c1", "c2", "c3")
#: The paper's four control modes (Fig. 1) and the held-out dataset that exercises each (Tab. 3 rows).
CONTROL_MODES: dict[str, str] = {
    "static-frontal": "PhoneCapture",
    "static-novel-view": "StudioCapture",
    "moving-camera-static-face": "ViewSweep",
    "all-dynamic": "DynamicSweep",
}
#: datagen --mode of each dataset name.
DATAGEN_MODES: dict[str, str] = {
    "PhoneCapture": "phonecapture",
    "StudioCapture": "studiocapture",
    "ViewSweep": "viewsweep",
    "DynamicSweep": "dynamicsweep",
}


class ReproConfigError(ValueError):
    """A bad reproduction setting; names the source, the field and the value."""


@dataclass
class ReproConfig:
    preset: str = "cpu"
    seed: int = 0
    device: str = "cpu"  # cpu | cuda
    mixed_precision: str = "no"  # no | bf16 (fine-tuning; the VAE and instruments stay fp32)
    threads: int = 2  # torch intra-op threads
    # worker processes for independent steps (VAE / instruments, latent caches, fine-tuning chains, evaluations),
    # each with threads // step_parallel threads: on a small CPU two 1-thread processes do ~2x the work of one
    # 2-thread process (reproduction/workers.py); 1 = everything in this process (a single GPU)
    step_parallel: int = 1
    # ---- data (datagen, demo avatars demo-000 .. demo-015)
    train_ids: list[str] = field(default_factory=lambda: [f"demo-{i:03d}" for i in range(12)])
    heldout_ids: list[str] = field(default_factory=lambda: [f"demo-{i:03d}" for i in range(12, 16)])
    heldout_sequence_ids: list[str] = field(default_factory=lambda: ["demo-000", "demo-004", "demo-008"])
    heldout_sequence_seed: int = 1  # plans of the held-out sequences of train identities (training uses `seed`)
    resolution: int = 64
    frames_per_sequence: int = 24
    sequences: dict[str, int] = field(
        default_factory=lambda: {"PhoneCapture": 2, "StudioCapture": 1, "ViewSweep": 2, "DynamicSweep": 2}
    )
    heldout_sequences: int = 1  # per identity and dataset
    spin_sweep_deg: float = 90.0  # ViewSweep/DynamicSweep spins: degrees over a sequence
    studio_yaw_deg: list[float] = field(default_factory=lambda: [-40.0, 30.0])  # StudioCapture rig (one row each)
    studio_pitch_deg: list[float] = field(default_factory=lambda: [5.0, -5.0])
    # normal maps: "neutral" = the template posed by the head pose (paper Sec. 3.3, body-mesh tracking: pose and
    # viewpoint only, so the expression has to come from the codes); "tracked" = with the expression (datagen option)
    normal_mesh: str = "neutral"
    render_workers: int = 0  # datagen --workers per job (0: in its process, no Ray start-up cost)
    render_parallel: int = 2  # datagen jobs run at the same time
    # ---- VAE (diffusers AutoencoderKLWan, 8x spatial / 4x temporal kept)
    vae_base_dim: int = 16
    vae_dim_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 2])
    vae_num_res_blocks: int = 1
    vae_steps: int = 600
    vae_batch: int = 4
    vae_frames: int = 5
    vae_crop: int = 0  # random square crops of this side (multiple of 8) for training windows; 0 = whole frames
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    vae_normals_fraction: float = 0.5  # share of training windows taken from normal-map videos (also VAE-encoded)
    vae_eval_videos: int = 0  # videos per split and kind in the reconstruction report (0 = all)
    # ---- prior (a small WanTransformer3DModel trained as a plain video model)
    dit_layers: int = 4
    dit_heads: int = 4
    dit_head_dim: int = 32
    dit_ffn_dim: int = 512
    dit_text_dim: int = 64
    prior_steps: int = 400
    prior_batch: int = 8
    prior_frames: int = 13
    prior_lr: float = 5e-4
    # ---- fine-tuning (model-train stages 1-4; Tab. 1 mixtures, scaled frames and iterations)
    stage_frames: list[int] = field(default_factory=lambda: [5, 9, 13, 17])
    stage_iterations: list[int] = field(default_factory=lambda: [150, 150, 200, 100])
    stage_lr: list[float] = field(default_factory=lambda: [5e-4, 5e-4, 3e-4, 2e-4])
    train_batch: int = 4
    warmup_steps: int = 20
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    # ---- instruments (two ResNet34s: expression 128-d on face crops; pose 9-d + identity 128-d on whole frames)
    # extra generated demo identities (demo-0016 ...) whose face shapes mix only train identities' meshes, rendered
    # for the instruments alone (never for fine-tuning): 12 identities cannot teach an expression encoder to tell
    # expression from face shape. 0 = none; `instrument_sequences`: datagen sequences per such identity.
    instrument_ids: int = 0
    instrument_sequences: dict[str, int] = field(default_factory=lambda: {"PhoneCapture": 1, "DynamicSweep": 1})
    instrument_steps: int = 300  # pose + identity network
    expression_steps: int = 300  # expression encoder
    instrument_batch: int = 32
    instrument_lr: float = 1e-3
    instrument_size: int = 64  # crop side the instruments see (the frames' own size at 64 px)
    # ---- evaluation
    eval_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    eval_steps: int = 20  # Euler steps
    eval_frames: int = 17
    eval_clips_per_mode: int = 4  # per split (held-out identities; held-out sequences)
    swap_variants: list[str] = field(default_factory=lambda: ["full"])  # models that get the swap tests
    contact_sheet_clips: int = 4

    def __post_init__(self) -> None:
        self.validate("ReproConfig")

    def validate(self, source: str) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ReproConfigError(f"{source}: field '{name}' = {getattr(self, name)!r}: {what}")

        need(self.device in ("cpu", "cuda"), "device", "cpu or cuda")
        need(self.mixed_precision in ("no", "bf16"), "mixed_precision", "no or bf16")
        need(self.resolution >= 16 and self.resolution % 16 == 0, "resolution", "a multiple of 16 (VAE 8x, patch 2x)")
        need(bool(self.train_ids) and bool(self.heldout_ids), "train_ids", "train and held-out identities needed")
        need(not set(self.train_ids) & set(self.heldout_ids), "heldout_ids", "must not overlap train_ids")
        need(set(self.heldout_sequence_ids) <= set(self.train_ids), "heldout_sequence_ids", "must be train ids (or [])")
        need(self.render_parallel >= 1, "render_parallel", "must be >= 1")
        need(self.step_parallel >= 1, "step_parallel", "must be >= 1")
        need(self.normal_mesh in ("neutral", "tracked"), "normal_mesh", "neutral or tracked")
        need(len(self.studio_yaw_deg) == len(self.studio_pitch_deg) >= 1, "studio_yaw_deg", "one pitch per yaw")
        need(self.heldout_sequence_seed != self.seed, "heldout_sequence_seed", "must differ from seed")
        need(set(self.sequences) <= set(DATAGEN_MODES), "sequences", f"keys among {list(DATAGEN_MODES)}")
        need(len(self.vae_dim_mult) == 4, "vae_dim_mult", "4 entries (3 downsamples = 8x)")
        need((self.vae_frames - 1) % 4 == 0, "vae_frames", "1 + 4k")
        crop_ok = self.vae_crop % 8 == 0 and 0 <= self.vae_crop <= self.resolution
        need(crop_ok, "vae_crop", "0 or a multiple of 8 <= resolution")
        need((self.prior_frames - 1) % 4 == 0, "prior_frames", "1 + 4k")
        for name in ("stage_frames", "stage_iterations", "stage_lr"):
            need(len(getattr(self, name)) == 4, name, "one value per stage (4)")
        need(all((f - 1) % 4 == 0 for f in self.stage_frames), "stage_frames", "each 1 + 4k")
        need((self.eval_frames - 1) % 4 == 0, "eval_frames", "1 + 4k")
        need(self.eval_frames < self.frames_per_sequence, "eval_frames", "< frames_per_sequence (reference frames)")
        need(max(self.stage_frames + [self.prior_frames]) <= self.frames_per_sequence, "stage_frames", "<= sequence")
        need(set(self.variants) <= set(VARIANTS) and "full" in self.variants, "variants", f"subset of {VARIANTS}")
        need(set(self.swap_variants) <= set(self.variants), "swap_variants", "a subset of variants")
        need(len(self.eval_seeds) >= 1, "eval_seeds", "at least one seed")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str) -> ReproConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ReproConfigError(f"{source}: unknown field(s) {unknown}")
        try:
            return cls(**data)
        except ReproConfigError as err:
            raise ReproConfigError(str(err).replace("ReproConfig", source)) from err
        except TypeError as err:
            raise ReproConfigError(f"{source}: {err}") from err


def parse_override(text: str) -> tuple[str, Any]:
    """'key=value' with a TOML value ('vae_steps=100', 'variants=["full","c2"]', 'device="cuda"' or device=cuda)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ReproConfigError(f"--set {text!r}: expected KEY=VALUE (e.g. vae_steps=100)")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare string
    return key.strip(), parsed


def load_repro_config(preset: str | Path, overrides: list[str] | None = None) -> ReproConfig:
    """Defaults <- preset TOML (a name in PRESETS or a path) <- `--set` overrides."""
    path = Path(preset) if str(preset).endswith(".toml") else PRESET_DIR / f"{preset}.toml"
    if not path.is_file():
        raise ReproConfigError(f"--preset {preset!r}: no file {path} (presets: {', '.join(PRESETS)})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ReproConfigError(f"{path}: not valid TOML ({err})") from err
    data.setdefault("preset", path.stem)
    source = str(path)
    for text in overrides or []:
        key, value = parse_override(text)
        data[key] = value
        source = f"{path} + --set"
    return ReproConfig.from_dict(data, source)
