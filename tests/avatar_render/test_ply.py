"""INRIA 3DGS PLY read/write: files built by hand here, round trips, exact bytes, bad input, atomic writes."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from avatar_render import ply
from avatar_render.gaussians import GaussianSet
from avatar_render.ply import PlyFormatError, read_ply, write_ply

TYPE_CODES = {"float": "<f4", "double": "<f8", "uchar": "<u1", "int": "<i4"}


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # torch.testing.assert_close costs ~3 s on first use here; allclose keeps the file fast.
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected.to(actual.dtype), rtol=1e-6, atol=1e-6), (actual, expected)


def inria_names(degree: int, normals: bool) -> list[str]:
    """INRIA property order, spelt out independently of the module under test."""
    n_rest = {0: 0, 1: 9, 2: 24, 3: 45}[degree]
    names = ["x", "y", "z"]
    if normals:
        names += ["nx", "ny", "nz"]
    names += ["f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(n_rest)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def known_value(name: str, vertex: int) -> float:
    """A distinct, float32-exact value per (property, vertex)."""
    if name.startswith("f_rest_"):
        return 100.0 + int(name[7:]) + 1000.0 * vertex
    fixed = {
        "x": 1.5,
        "y": -2.0,
        "z": 3.25,
        "nx": 0.0,
        "ny": 0.0,
        "nz": 1.0,
        "f_dc_0": 0.5,
        "f_dc_1": -0.25,
        "f_dc_2": 1.0,
        "opacity": -1.5,
        "scale_0": -3.0,
        "scale_1": -2.5,
        "scale_2": 0.5,
        "rot_0": 2.0,
        "rot_1": 0.0,
        "rot_2": 0.0,
        "rot_3": 0.0,  # norm 2 -> (1, 0, 0, 0)
        "red": 200,
        "green": 17,
        "blue": 3,
    }
    return fixed[name] + (vertex if name in ("x", "y", "z", "opacity") else 0)


def build_ply(
    path: Path,
    props: list[tuple[str, str]],
    n: int,
    fmt: str = "binary_little_endian 1.0",
    values: dict[str, np.ndarray] | None = None,
    extra_header: str = "",
    extra_body: bytes = b"",
) -> bytes:
    """Write a PLY with the given (type, name) properties field by field; returns the bytes written."""
    header = f"ply\nformat {fmt}\ncomment built by test_ply\nelement vertex {n}\n"
    header += "".join(f"property {typ} {name}\n" for typ, name in props)
    header += extra_header + "end_header\n"
    table = np.zeros(n, dtype=[(name, TYPE_CODES[typ]) for typ, name in props])
    for _, name in props:
        table[name] = [known_value(name, v) for v in range(n)]
    for name, col in (values or {}).items():
        table[name] = col
    data = header.encode("ascii") + table.tobytes() + extra_body
    path.write_bytes(data)
    return data


def float_props(degree: int, normals: bool) -> list[tuple[str, str]]:
    return [("float", name) for name in inria_names(degree, normals)]


# ---------------------------------------------------------------------------------------------- reading
@pytest.mark.parametrize("normals", [True, False])
@pytest.mark.parametrize("degree", [1, 3])
def test_hand_written_file_loads(tmp_path: Path, degree: int, normals: bool) -> None:
    path = tmp_path / "hand.ply"
    build_ply(path, float_props(degree, normals), n=2)
    g = read_ply(path)
    k = (degree + 1) ** 2
    assert g.sh.shape == (2, k, 3) and g.sh_degree == degree
    assert all(t.dtype == torch.float32 for t in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh))
    assert_close(g.means, torch.tensor([[1.5, -2.0, 3.25], [2.5, -1.0, 4.25]]))
    assert_close(g.quats, torch.tensor([[1.0, 0, 0, 0]] * 2))  # normalised from norm 2
    assert_close(g.log_scales, torch.tensor([[-3.0, -2.5, 0.5]] * 2))
    assert_close(g.opacity_logits, torch.tensor([-1.5, -0.5]))
    assert_close(g.sh[:, 0], torch.tensor([[0.5, -0.25, 1.0]] * 2))
    # Channel-major f_rest: index c*(K-1) + (k-1) -> sh[:, k, c]; f_rest_i holds 100 + i (+1000 per vertex).
    if degree == 1:  # K-1 = 3
        checks = {(1, 0): 0, (2, 0): 1, (3, 0): 2, (1, 1): 3, (2, 1): 4, (1, 2): 6, (3, 2): 8}
    else:  # K-1 = 15
        checks = {(1, 0): 0, (15, 0): 14, (1, 1): 15, (2, 1): 16, (1, 2): 30, (8, 2): 37, (15, 2): 44}
    for (coef, chan), idx in checks.items():
        assert g.sh[0, coef, chan].item() == 100.0 + idx, (coef, chan)
        assert g.sh[1, coef, chan].item() == 1100.0 + idx, (coef, chan)
    # Activations match the INRIA definitions.
    sig = [1 / (1 + math.exp(1.5)), 1 / (1 + math.exp(0.5))]
    assert_close(g.opacities, torch.tensor(sig))
    assert_close(g.scales, torch.tensor([[math.exp(-3.0), math.exp(-2.5), math.exp(0.5)]] * 2))
    assert_close(g.rgb, torch.tensor([[0.28209479 * d + 0.5 for d in (0.5, -0.25, 1.0)]] * 2))


def test_shuffled_order_extra_uchar_and_double(tmp_path: Path) -> None:
    props = float_props(1, normals=True) + [("uchar", "red"), ("uchar", "green"), ("uchar", "blue")]
    random.Random(0).shuffle(props)
    props = [("double", name) if name == "z" else (typ, name) for typ, name in props]
    rots = np.array([[0.0, 3.0, 4.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, -0.5]], dtype=np.float32)
    path = tmp_path / "shuffled.ply"
    build_ply(path, props, n=3, values={f"rot_{i}": rots[:, i] for i in range(4)})
    g = read_ply(path)
    assert_close(g.means[:, 2], torch.tensor([3.25, 4.25, 5.25]))
    assert_close(g.quats, torch.tensor([[0, 0.6, 0.8, 0], [0.5] * 4, [0, 0, 0, -1.0]]))
    assert_close(g.quats.norm(dim=1), torch.ones(3))
    assert g.sh[2, 1, 1].item() == 2103.0 and g.sh[0, 3, 2].item() == 108.0
    assert_close(g.opacity_logits, torch.tensor([-1.5, -0.5, 0.5]))


def test_extra_fixed_size_element_is_skipped(tmp_path: Path) -> None:
    extra = (
        "element camera 2\nproperty float fx\nproperty uchar id\nelement face 0\n"
        "property list uchar int vertex_indices\n"
    )
    path = tmp_path / "extra.ply"
    build_ply(path, float_props(0, False), n=2, extra_header=extra, extra_body=b"\0" * 10)
    g = read_ply(path)
    assert len(g) == 2 and g.sh_degree == 0
    # The extra element counts towards the size the header promises.
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(PlyFormatError, match="truncated"):
        read_ply(path)


# ---------------------------------------------------------------------------------------------- writing
def random_set(n: int, degree: int, seed: int = 0) -> GaussianSet:
    gen = torch.Generator().manual_seed(seed)
    quats = torch.randn(n, 4, generator=gen)
    return GaussianSet(
        means=torch.randn(n, 3, generator=gen),
        quats=quats / quats.norm(dim=1, keepdim=True),
        log_scales=torch.randn(n, 3, generator=gen) - 3,
        opacity_logits=torch.randn(n, generator=gen),
        sh=torch.randn(n, (degree + 1) ** 2, 3, generator=gen),
    )


@pytest.mark.parametrize("with_normals", [True, False])
@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_exact(tmp_path: Path, degree: int, with_normals: bool) -> None:
    g = random_set(50, degree, seed=degree)
    path = tmp_path / "rt.ply"
    write_ply(g, path, with_normals=with_normals)
    back = read_ply(path)
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh"):
        assert torch.equal(getattr(back, name), getattr(g, name)), name


def test_round_trip_empty(tmp_path: Path) -> None:
    write_ply(random_set(0, 2), tmp_path / "empty.ply")
    back = read_ply(tmp_path / "empty.ply")
    assert len(back) == 0 and back.sh.shape == (0, 9, 3)


@pytest.mark.parametrize(
    ("degree", "with_normals", "num_props"), [(3, True, 62), (3, False, 59), (0, True, 17), (2, False, 38)]
)
def test_written_bytes_layout(tmp_path: Path, degree: int, with_normals: bool, num_props: int) -> None:
    n = 7
    g = random_set(n, degree)
    path = tmp_path / "layout.ply"
    write_ply(g, path, with_normals=with_normals)
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    lines = data[:end].decode("ascii").splitlines()
    expected = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    expected += [f"property float {name}" for name in inria_names(degree, with_normals)] + ["end_header"]
    assert lines == expected
    assert len(inria_names(degree, with_normals)) == num_props
    assert len(data) == end + n * 4 * num_props
    table = np.frombuffer(data[end:], dtype="<f4").reshape(n, num_props)
    col = {name: table[:, i] for i, name in enumerate(inria_names(degree, with_normals))}
    np.testing.assert_array_equal(col["x"], g.means[:, 0].numpy())
    np.testing.assert_array_equal(col["rot_3"], g.quats[:, 3].numpy())
    np.testing.assert_array_equal(col["opacity"], g.opacity_logits.numpy())
    np.testing.assert_array_equal(col["scale_2"], g.log_scales[:, 2].numpy())
    np.testing.assert_array_equal(col["f_dc_1"], g.sh[:, 0, 1].numpy())
    if with_normals:
        assert not table[:, 3:6].any()
    if degree >= 2:
        kr = (degree + 1) ** 2 - 1
        np.testing.assert_array_equal(col["f_rest_1"], g.sh[:, 2, 0].numpy())
        np.testing.assert_array_equal(col[f"f_rest_{kr}"], g.sh[:, 1, 1].numpy())  # first G coefficient
        np.testing.assert_array_equal(col[f"f_rest_{3 * kr - 1}"], g.sh[:, kr, 2].numpy())  # last B


def test_write_rejects_non_finite(tmp_path: Path) -> None:
    g = random_set(3, 1)
    g.log_scales[1, 0] = float("inf")
    with pytest.raises(ValueError, match="log_scales"):
        write_ply(g, tmp_path / "bad.ply")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------- bad input
def expect_error(path: Path, *fragments: str) -> None:
    with pytest.raises(PlyFormatError) as info:
        read_ply(path)
    msg = str(info.value)
    assert path.name in msg, msg
    for frag in fragments:
        assert frag in msg, (frag, msg)


def test_truncated_body(tmp_path: Path) -> None:
    path = tmp_path / "trunc.ply"
    data = build_ply(path, float_props(1, True), n=4)
    path.write_bytes(data[:-6])
    expected = 4 * 4 * 26  # 4 vertices, 26 float32 properties
    expect_error(path, "truncated", str(expected), str(expected - 6))


def test_wrong_rest_count(tmp_path: Path) -> None:
    props = float_props(0, False) + [("float", f"f_rest_{i}") for i in range(10)]
    path = tmp_path / "rest10.ply"
    build_ply(path, props, n=2)
    expect_error(path, "f_rest", "10")


def test_rest_gap(tmp_path: Path) -> None:
    props = [p for p in float_props(1, False) if p[1] != "f_rest_4"] + [("float", "f_rest_9")]
    path = tmp_path / "gap.ply"
    build_ply(path, props, n=1)
    expect_error(path, "f_rest_4")


@pytest.mark.parametrize(("fmt", "word"), [("ascii 1.0", "ascii"), ("binary_big_endian 1.0", "big-endian")])
def test_unsupported_format(tmp_path: Path, fmt: str, word: str) -> None:
    path = tmp_path / "fmt.ply"
    build_ply(path, float_props(0, False), n=1, fmt=fmt)
    expect_error(path, word)


def test_missing_property(tmp_path: Path) -> None:
    path = tmp_path / "missing.ply"
    build_ply(path, [p for p in float_props(1, True) if p[1] != "scale_1"], n=2)
    expect_error(path, "missing", "scale_1")


def test_nan_value(tmp_path: Path) -> None:
    path = tmp_path / "nan.ply"
    build_ply(path, float_props(1, True), n=3, values={"opacity": np.array([0.0, np.nan, 1.0])})
    expect_error(path, "opacity", "non-finite", "vertex 1")


def test_zero_quaternion(tmp_path: Path) -> None:
    path = tmp_path / "zeroq.ply"
    build_ply(path, float_props(0, False), n=2, values={"rot_0": np.array([1.0, 0.0])})
    expect_error(path, "zero-length", "vertex 1")


@pytest.mark.parametrize("content", [b"hello world\n" + b"\0" * 64, b"", b"PK\x03\x04binary"])
def test_not_a_ply(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notply.bin"
    path.write_bytes(content)
    expect_error(path, "not a PLY")


def test_header_without_end(tmp_path: Path) -> None:
    path = tmp_path / "noend.ply"
    path.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 1\n")
    expect_error(path, "end_header")


# ---------------------------------------------------------------------------------------------- atomic write
def test_write_into_missing_directory_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "no_such_dir" / "out.ply"
    with pytest.raises(OSError):
        write_ply(random_set(4, 1), target)
    assert not target.exists() and not target.parent.exists()


def test_failed_write_keeps_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "good.ply"
    write_ply(random_set(20, 2), target)
    good = target.read_bytes()

    def half_then_fail(f, data: np.ndarray) -> None:
        f.write(data.tobytes()[: data.nbytes // 2])
        raise OSError("disk full")

    monkeypatch.setattr(ply, "_write_body", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_ply(random_set(20, 3, seed=1), target)
    assert target.read_bytes() == good
    assert os.listdir(tmp_path) == ["good.ply"]  # temp file cleaned up

    monkeypatch.undo()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("rename failed")))
    with pytest.raises(OSError, match="rename failed"):
        write_ply(random_set(20, 3, seed=1), target)
    monkeypatch.undo()
    assert target.read_bytes() == good
    assert os.listdir(tmp_path) == ["good.ply"]
    assert read_ply(target).sh_degree == 2
