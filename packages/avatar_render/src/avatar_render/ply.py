"""Read and write the INRIA 3D Gaussian Splatting PLY layout (CONVENTIONS section 2).

One binary little-endian `element vertex N` of float32 properties, written in the order
``x y z [nx ny nz] f_dc_0..2 f_rest_0..(3*(K-1)-1) opacity scale_0..2 rot_0..3``.
f_rest is channel-major (index = c*(K-1) + (k-1)); opacity is a logit, scale_* are log
scales and rot_* a wxyz quaternion (normalised on load). Files from other tools may order
properties differently, add extra ones (normals, red/green/blue, ...) or extra fixed-size
elements: properties are looked up by name and everything else is skipped.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .gaussians import GaussianSet

__all__ = ["PlyFormatError", "read_ply", "write_ply"]


class PlyFormatError(ValueError):
    """A file is not a PLY we can read as INRIA Gaussians; the message names the file and the problem."""


#: PLY scalar type names (both spellings) -> little-endian numpy dtype.
_PLY_TYPES: dict[str, str] = {
    "char": "<i1",
    "int8": "<i1",
    "uchar": "<u1",
    "uint8": "<u1",
    "short": "<i2",
    "int16": "<i2",
    "ushort": "<u2",
    "uint16": "<u2",
    "int": "<i4",
    "int32": "<i4",
    "uint": "<u4",
    "uint32": "<u4",
    "float": "<f4",
    "float32": "<f4",
    "double": "<f8",
    "float64": "<f8",
}
_FLOAT_DTYPES = {"<f4", "<f8"}

#: Number of f_rest properties -> SH degree.
_DEGREE_FOR_REST = {0: 0, 9: 1, 24: 2, 45: 3}
_REST_RE = re.compile(r"f_rest_(\d+)")

# A header is a few hundred bytes; these bounds stop us scanning a large non-PLY binary for newlines.
_MAX_HEADER_LINE = 4096
_MAX_HEADER_BYTES = 1 << 20

# Quaternions already unit to float32 precision are left untouched: re-dividing would only add
# rounding noise, and leaving them keeps write -> read bit-exact.
_QUAT_UNIT_TOL = 1e-6


@dataclass
class _Element:
    name: str
    count: int
    props: list[tuple[str, str]] = field(default_factory=list)  # (name, numpy dtype)
    list_props: list[str] = field(default_factory=list)  # variable-size: cannot be skipped by size

    def dtype(self) -> np.dtype:
        return np.dtype(self.props)


# ---------------------------------------------------------------------------------------------- reading
def _read_header_lines(f: BinaryIO, src: str) -> list[str]:
    """Header lines between the magic and `end_header`; leaves `f` at the start of the body."""
    magic = f.readline(_MAX_HEADER_LINE)
    if magic.rstrip(b"\r\n") != b"ply":
        raise PlyFormatError(f"{src}: not a PLY file (starts with {magic[:16]!r}, expected b'ply')")
    lines: list[str] = []
    while True:
        raw = f.readline(_MAX_HEADER_LINE)
        if not raw:
            raise PlyFormatError(f"{src}: PLY header has no 'end_header' line")
        if raw.strip() == b"end_header":
            return lines
        if not raw.endswith(b"\n") or f.tell() > _MAX_HEADER_BYTES:
            raise PlyFormatError(f"{src}: PLY header is malformed or has no 'end_header' line")
        try:
            lines.append(raw.decode("ascii").strip())
        except UnicodeDecodeError:
            raise PlyFormatError(f"{src}: PLY header contains non-ASCII bytes: {raw[:40]!r}") from None


def _parse_header(lines: list[str], src: str) -> list[_Element]:
    fmt_seen = False
    elements: list[_Element] = []
    for line in lines:
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        key = words[0]
        if key == "format":
            if len(words) != 3:
                raise PlyFormatError(f"{src}: malformed format line {line!r}")
            if words[1] == "ascii":
                raise PlyFormatError(f"{src}: ascii PLY is not supported (need binary_little_endian)")
            if words[1] == "binary_big_endian":
                raise PlyFormatError(
                    f"{src}: big-endian PLY (binary_big_endian) is not supported (need binary_little_endian)"
                )
            if words[1] != "binary_little_endian" or words[2] != "1.0":
                raise PlyFormatError(
                    f"{src}: unsupported format {' '.join(words[1:])!r} (need binary_little_endian 1.0)"
                )
            fmt_seen = True
        elif key == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise PlyFormatError(f"{src}: malformed element line {line!r}")
            elements.append(_Element(words[1], int(words[2])))
        elif key == "property":
            if not elements:
                raise PlyFormatError(f"{src}: property line before any element: {line!r}")
            el = elements[-1]
            if len(words) == 5 and words[1] == "list":
                el.list_props.append(words[4])
                continue
            if len(words) != 3 or words[1] not in _PLY_TYPES:
                raise PlyFormatError(f"{src}: malformed or unknown-type property line {line!r}")
            if any(words[2] == name for name, _ in el.props) or words[2] in el.list_props:
                raise PlyFormatError(f"{src}: element '{el.name}' has duplicate property '{words[2]}'")
            el.props.append((words[2], _PLY_TYPES[words[1]]))
        else:
            raise PlyFormatError(f"{src}: unknown PLY header line {line!r}")
    if not fmt_seen:
        raise PlyFormatError(f"{src}: PLY header has no format line")
    return elements


def _rest_count(names: set[str], src: str) -> int:
    """Number of f_rest_* properties, checked to be a supported count numbered 0..M-1."""
    rest = [n for n in names if _REST_RE.fullmatch(n)]
    if len(rest) not in _DEGREE_FOR_REST:
        raise PlyFormatError(
            f"{src}: unsupported number of f_rest properties: {len(rest)} (expected 0, 9, 24 or 45 for SH degree 0..3)"
        )
    for i in range(len(rest)):
        if f"f_rest_{i}" not in names:
            raise PlyFormatError(
                f"{src}: missing required property 'f_rest_{i}' "
                f"({len(rest)} f_rest properties must be numbered 0..{len(rest) - 1})"
            )
    return len(rest)


def read_ply(path: str | os.PathLike[str]) -> GaussianSet:
    """Load an INRIA-layout Gaussian PLY as float32 CPU tensors; raises PlyFormatError on bad input."""
    src = str(path)
    with open(path, "rb") as f:
        elements = _parse_header(_read_header_lines(f, src), src)
        body = f.read()

    vertex_idx = [i for i, el in enumerate(elements) if el.name == "vertex"]
    if len(vertex_idx) != 1:
        raise PlyFormatError(f"{src}: expected exactly one 'vertex' element, found {len(vertex_idx)}")
    # Other elements are skipped by size, which is only known for fixed-size ones.
    offset, vertex_offset = 0, 0
    for i, el in enumerate(elements):
        if el.list_props and el.count > 0:
            raise PlyFormatError(
                f"{src}: element '{el.name}' has variable-size list property "
                f"'{el.list_props[0]}'; only fixed-size elements are supported"
            )
        if i == vertex_idx[0]:
            vertex_offset = offset
        offset += el.count * el.dtype().itemsize
    expected = offset
    vertex = elements[vertex_idx[0]]
    n = vertex.count

    types = dict(vertex.props)
    k_rest = _rest_count(set(types), src)
    rest_names = [f"f_rest_{i}" for i in range(k_rest)]
    groups = {
        "means": ["x", "y", "z"],
        "dc": ["f_dc_0", "f_dc_1", "f_dc_2"],
        "rest": rest_names,
        "opacity": ["opacity"],
        "scale": ["scale_0", "scale_1", "scale_2"],
        "rot": ["rot_0", "rot_1", "rot_2", "rot_3"],
    }
    for names in groups.values():
        for name in names:
            if name not in types:
                raise PlyFormatError(f"{src}: missing required property '{name}'")
            if types[name] not in _FLOAT_DTYPES:
                raise PlyFormatError(
                    f"{src}: property '{name}' has integer type {types[name]}; expected float or double"
                )

    if len(body) < expected:
        raise PlyFormatError(
            f"{src}: truncated body: header promises {expected} bytes ({n} vertices), file has {len(body)}"
        )
    # Trailing bytes beyond what the header describes are ignored, as other PLY readers do.
    records = np.frombuffer(body, dtype=vertex.dtype(), count=n, offset=vertex_offset)

    def columns(names: list[str]) -> np.ndarray:
        if not names:
            return np.zeros((n, 0), dtype=np.float32)
        out = np.stack([records[name].astype(np.float32) for name in names], axis=1)
        bad = ~np.isfinite(out)
        if bad.any():
            col = int(np.flatnonzero(bad.any(axis=0))[0])
            rows = np.flatnonzero(bad[:, col])
            raise PlyFormatError(
                f"{src}: property '{names[col]}' has {rows.size} non-finite values (first at vertex {int(rows[0])})"
            )
        return out

    cols = {key: columns(names) for key, names in groups.items()}

    quats = cols["rot"].astype(np.float64)
    norms = np.linalg.norm(quats, axis=1)
    if (norms == 0).any():
        raise PlyFormatError(
            f"{src}: rot_0..rot_3 has {int((norms == 0).sum())} zero-length "
            f"quaternions (first at vertex {int(np.flatnonzero(norms == 0)[0])})"
        )
    fix = np.abs(norms - 1.0) > _QUAT_UNIT_TOL
    quats_out = cols["rot"].copy()
    quats_out[fix] = (quats[fix] / norms[fix, None]).astype(np.float32)

    # f_rest is channel-major [N, 3, K-1]; ours is coefficient-major [N, K-1, 3].
    rest = cols["rest"].reshape(n, 3, k_rest // 3).transpose(0, 2, 1)
    sh = np.concatenate([cols["dc"][:, None, :], rest], axis=1)

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    return GaussianSet(
        means=t(cols["means"]),
        quats=t(quats_out),
        log_scales=t(cols["scale"]),
        opacity_logits=t(cols["opacity"][:, 0]),
        sh=t(sh),
    )


# ---------------------------------------------------------------------------------------------- writing
def _property_names(sh_degree: int, with_normals: bool) -> list[str]:
    """Property names in INRIA order."""
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (
        ["x", "y", "z"]
        + (["nx", "ny", "nz"] if with_normals else [])
        + [f"f_dc_{i}" for i in range(3)]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity"]
        + [f"scale_{i}" for i in range(3)]
        + [f"rot_{i}" for i in range(4)]
    )


def _write_body(f: BinaryIO, data: np.ndarray) -> None:
    """Write the vertex table (a seam so tests can make the write fail part-way)."""
    f.write(data)  # buffer protocol: no copy of a potentially large table


def write_ply(gaussians: GaussianSet, path: str | os.PathLike[str], with_normals: bool = True) -> None:
    """Write INRIA-layout float32 PLY atomically (temp file in the same directory, then os.replace).

    Normals are written as zeros when `with_normals` (SuperSplat / the INRIA viewer expect them).
    Raises ValueError, before touching the file system, if any value is non-finite.
    """
    target = Path(path)
    degree = gaussians.sh_degree
    if degree > 3:
        raise ValueError(f"write_ply({target}): SH degree {degree} > 3 does not fit the INRIA layout")
    gaussians.check_finite(source=f"write_ply({target})")
    n = len(gaussians)

    def arr(x: torch.Tensor, width: int) -> np.ndarray:
        return x.detach().to("cpu", torch.float32).numpy().reshape(n, width)

    sh = gaussians.sh.detach().to("cpu", torch.float32).numpy()
    parts = [arr(gaussians.means, 3)]
    if with_normals:
        parts.append(np.zeros((n, 3), dtype=np.float32))
    k_rest = 3 * (sh.shape[1] - 1)
    parts += [
        sh[:, 0],
        sh[:, 1:].transpose(0, 2, 1).reshape(n, k_rest),  # -> channel-major f_rest
        arr(gaussians.opacity_logits, 1),
        arr(gaussians.log_scales, 3),
        arr(gaussians.quats, 4),
    ]
    # All properties are float32, so a C-contiguous [N, P] little-endian table has the record layout.
    data = np.ascontiguousarray(np.concatenate(parts, axis=1), dtype="<f4")
    names = _property_names(degree, with_normals)
    assert data.shape[1] == len(names)
    header = "".join(
        [
            "ply\n",
            "format binary_little_endian 1.0\n",
            f"element vertex {n}\n",
            *(f"property float {name}\n" for name in names),
            "end_header\n",
        ]
    )

    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    # os.open with 0o666 lets the umask pick the final permissions (mkstemp would force 0600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(header.encode("ascii"))
            _write_body(f, data)
            f.flush()
            os.fsync(f.fileno())  # data on disk before the rename makes it visible
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
