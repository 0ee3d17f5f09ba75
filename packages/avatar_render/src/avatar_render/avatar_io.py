"""The avatar file format: one safetensors file with a JSON header (format documented in docs/avatar_format.md).

`load_avatar` accepts a path or a demo id (`demo-000` ... `demo-015`). Loading validates every field
(presence, dtype, shape, finiteness, index ranges) and names the file and the field in its errors.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from .avatar import Avatar
from .landmarks import LandmarkLayout

FORMAT_NAME = "factorportrait-avatar"
#: 2 added the optional `landmarks` header entry; version-1 files load with their topology's default layout.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
SUFFIX = ".avatar.safetensors"

# field -> (kind, shape spec). Letters are sizes shared across fields; integers are fixed.
_TENSOR_FIELDS: dict[str, tuple[str, tuple[str | int, ...]]] = {
    "neutral_vertices": ("float", ("V", 3)),
    "faces": ("int", ("F", 3)),
    "expression_basis": ("float", ("E", "V", 3)),
    "expression_map": ("float", ("E", "D")),
    "head_weights": ("float", ("V",)),
    "head_pivot": ("float", (3,)),
    "binding": ("int", ("N",)),
    "local_means": ("float", ("N", 3)),
    "local_quats": ("float", ("N", 4)),
    "local_log_scales": ("float", ("N", 3)),
    "opacity_logits": ("float", ("N",)),
    "sh": ("float", ("N", "K", 3)),
    "capture_codes": ("float", ("T", "D")),
    "capture_poses": ("float", ("T", 6)),
}


class AvatarFormatError(ValueError):
    """A malformed avatar file; the message names the file and the field."""


def save_avatar(avatar: Avatar, path: str | os.PathLike) -> Path:
    """Write `avatar` to `path` atomically (temporary file in the same folder, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {name: getattr(avatar, name).detach().cpu().contiguous() for name in _TENSOR_FIELDS}
    tensors["faces"] = tensors["faces"].to(torch.int32)
    tensors["binding"] = tensors["binding"].to(torch.int32)
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "name": avatar.name,
        "capture_fps": avatar.capture_fps,
        "rig_weight_range": list(avatar.rig_weight_range),
        "expression_labels": list(avatar.expression_labels),
        "metadata": avatar.metadata,
        "landmarks": None
        if avatar.landmark_layout is None
        else {"layout": avatar.landmark_layout.name, "vertex_ids": list(avatar.landmark_layout.vertex_ids)},
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"avatar": json.dumps(header)})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_avatar(path_or_id: str | os.PathLike, device: torch.device | str | None = None) -> Avatar:
    """Load an avatar file, or build the demo avatar with that id (e.g. "demo-003")."""
    from . import demo

    text = str(path_or_id)
    if demo.is_demo_id(text) and not Path(text).exists():
        avatar = demo.load_demo_avatar(text)
    else:
        path = Path(path_or_id)
        if not path.exists():
            raise FileNotFoundError(
                f"no avatar file '{path}' and not a demo id; demo avatars are {demo.demo_ids()[0]} ... "
                f"{demo.demo_ids()[-1]}"
            )
        avatar = read_avatar_file(path)
    return avatar.to(device=device) if device is not None else avatar


def read_avatar_file(path: Path) -> Avatar:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            raw_header = (handle.metadata() or {}).get("avatar")
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise AvatarFormatError(f"{path}: not a readable safetensors file ({err})") from err
    if raw_header is None:
        raise AvatarFormatError(f"{path}: field 'avatar' (JSON header) is missing: not a {FORMAT_NAME} file")
    try:
        header = json.loads(raw_header)
    except json.JSONDecodeError as err:
        raise AvatarFormatError(f"{path}: field 'avatar' is not valid JSON ({err})") from err
    if header.get("format") != FORMAT_NAME:
        raise AvatarFormatError(f"{path}: field 'format' is {header.get('format')!r}, expected {FORMAT_NAME!r}")
    version = header.get("format_version")
    if version not in READABLE_VERSIONS:
        raise AvatarFormatError(
            f"{path}: field 'format_version' is {version!r}; this reader supports {list(READABLE_VERSIONS)}"
        )
    validate_tensors(tensors, source=str(path))
    layout = _read_layout(header.get("landmarks"), tensors["neutral_vertices"].shape[0], str(path))
    low, high = header.get("rig_weight_range", [0.0, 1.0])
    return Avatar(
        name=str(header.get("name", path.name.removesuffix(SUFFIX))),
        **{
            name: tensors[name].long() if _TENSOR_FIELDS[name][0] == "int" else tensors[name].float()
            for name in _TENSOR_FIELDS
        },
        capture_fps=float(header.get("capture_fps", 25.0)),
        rig_weight_range=(float(low), float(high)),
        expression_labels=list(header.get("expression_labels", [])),
        metadata=dict(header.get("metadata", {})),
        landmark_layout=layout,
    )


def _read_layout(entry: object, num_vertices: int, source: str) -> LandmarkLayout | None:
    """The header's `landmarks` entry -> a layout; absent or null -> None (the topology's default)."""
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("layout"), str) or not entry["layout"]:
        raise AvatarFormatError(
            f"{source}: field 'landmarks' must be {{'layout': name, 'vertex_ids': [...]}}, got {entry!r}"
        )
    ids = entry.get("vertex_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise AvatarFormatError(f"{source}: field 'landmarks.vertex_ids' must be a non-empty list of integers")
    if min(ids) < 0 or max(ids) >= num_vertices:
        raise AvatarFormatError(
            f"{source}: field 'landmarks.vertex_ids' indexes vertex {max(ids)} (min {min(ids)}) but there are "
            f"{num_vertices}"
        )
    return LandmarkLayout(entry["layout"], tuple(ids))


def validate_tensors(tensors: dict[str, Tensor], source: str) -> None:
    """Check presence, dtype, shapes (consistent sizes), finiteness and index ranges of avatar tensors."""
    sizes: dict[str, int] = {}
    for name, (kind, spec) in _TENSOR_FIELDS.items():
        if name not in tensors:
            raise AvatarFormatError(f"{source}: field '{name}' is missing")
        value = tensors[name]
        if kind == "int" and value.is_floating_point():
            raise AvatarFormatError(f"{source}: field '{name}' must be integer, got {value.dtype}")
        if kind == "float" and not value.is_floating_point():
            raise AvatarFormatError(f"{source}: field '{name}' must be floating point, got {value.dtype}")
        if value.dim() != len(spec):
            raise AvatarFormatError(
                f"{source}: field '{name}' must have shape {_spec_text(spec)}, got {tuple(value.shape)}"
            )
        for axis, (want, got) in enumerate(zip(spec, value.shape, strict=True)):
            if isinstance(want, int):
                if got != want:
                    raise AvatarFormatError(
                        f"{source}: field '{name}' must have shape {_spec_text(spec)}, "
                        f"got {tuple(value.shape)} (axis {axis})"
                    )
            elif sizes.setdefault(want, got) != got:
                raise AvatarFormatError(
                    f"{source}: field '{name}' has {want}={got} on axis {axis} but other "
                    f"fields have {want}={sizes[want]}"
                )
        if kind == "float" and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise AvatarFormatError(f"{source}: field '{name}' has {bad} non-finite values (NaN or Inf)")
    _check_range(tensors["faces"], sizes["V"], "faces", "vertex", source)
    _check_range(tensors["binding"], sizes["F"], "binding", "triangle", source)
    weights = tensors["head_weights"]
    if weights.numel() and (weights.min() < 0 or weights.max() > 1):
        raise AvatarFormatError(
            f"{source}: field 'head_weights' must lie in [0, 1], got "
            f"[{float(weights.min()):.4g}, {float(weights.max()):.4g}]"
        )
    if tensors["sh"].shape[1] not in (1, 4, 9, 16):
        raise AvatarFormatError(
            f"{source}: field 'sh' has {tensors['sh'].shape[1]} coefficients; expected 1, 4, 9 or 16 (SH degree 0-3)"
        )


def _check_range(index: Tensor, size: int, name: str, what: str, source: str) -> None:
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
        raise AvatarFormatError(
            f"{source}: field '{name}' indexes {what} {int(index.max())} (min {int(index.min())}) but there are {size}"
        )


def _spec_text(spec: tuple[str | int, ...]) -> str:
    return "[" + ", ".join(str(s) for s in spec) + "]"
