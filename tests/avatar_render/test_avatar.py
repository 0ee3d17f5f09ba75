"""Avatars: rig, triangle binding, poses, file format and demo avatars."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avatar_render import AvatarFormatError, load_avatar, save_avatar
from avatar_render.geometry import axis_angle_to_rotmat, quat_to_rotmat, triangle_frames


def _code_for(avatar, **rig: float) -> torch.Tensor:
    weights = torch.zeros(1, len(avatar.expression_labels))
    for name, value in rig.items():
        weights[0, avatar.expression_labels.index(name)] = value
    return avatar.codes_from_rig_weights(weights)


def test_triangle_frame_matches_hand_computation():
    # v0=(0,0,0), v1=(2,0,0), v2=(0,2,0): a0=(1,0,0), a1=n(a0 x (v2-v0))=(0,0,1), a2=-n(a1 x a0)=(0,-1,0),
    # s=(|v1-v0| + |a2.(v2-v0)|)/2 = 2, c=(2/3, 2/3, 0).
    verts = torch.tensor([[0.0, 0, 0], [2, 0, 0], [0, 2, 0]])
    rot, centre, scale = triangle_frames(verts, torch.tensor([[0, 1, 2]]))
    torch.testing.assert_close(rot[0], torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]))
    torch.testing.assert_close(centre[0], torch.tensor([2 / 3, 2 / 3, 0.0]))
    assert float(scale[0]) == pytest.approx(2.0)


def test_zero_code_and_identity_pose_give_the_canonical_avatar(demo_avatar):
    posed = demo_avatar.canonical()
    torch.testing.assert_close(posed.vertices[0], demo_avatar.neutral_vertices, atol=1e-7, rtol=0)
    # binding on the neutral mesh, written out from CONVENTIONS 3 independently of Avatar.bind
    rot, centre, scale = triangle_frames(demo_avatar.neutral_vertices, demo_avatar.faces)
    b = demo_avatar.binding
    means = scale[b, None] * torch.einsum("nij,nj->ni", rot[b], demo_avatar.local_means) + centre[b]
    torch.testing.assert_close(posed.means[0], means, atol=1e-6, rtol=0)
    torch.testing.assert_close(posed.log_scales[0], demo_avatar.local_log_scales + scale[b, None].log())
    local_rot = quat_to_rotmat(demo_avatar.local_quats)
    torch.testing.assert_close(quat_to_rotmat(posed.quats[0]), rot[b] @ local_rot, atol=1e-5, rtol=0)


def test_rigid_motion_of_the_guide_mesh_moves_gaussians_rigidly(demo_avatar):
    demo_avatar = demo_avatar.to(dtype=torch.float64)  # sliver triangles: float32 rounding is ~1e-5 there
    codes, poses = demo_avatar.capture_segment(40, 1)
    verts = demo_avatar.pose_mesh(codes, poses)
    means, quats, log_scales = demo_avatar.bind(verts)
    rot = axis_angle_to_rotmat(torch.tensor([0.3, -0.5, 0.2], dtype=torch.float64))
    shift = torch.tensor([0.05, -0.02, 0.1], dtype=torch.float64)
    means2, quats2, log_scales2 = demo_avatar.bind(verts @ rot.T + shift)
    torch.testing.assert_close(means2, means @ rot.T + shift, atol=1e-12, rtol=0)
    torch.testing.assert_close(quat_to_rotmat(quats2), rot @ quat_to_rotmat(quats), atol=1e-9, rtol=0)
    torch.testing.assert_close(log_scales2, log_scales, atol=1e-9, rtol=0)


def test_head_rotation_turns_the_skull_about_the_pivot_and_translation_moves_everything(demo_avatar):
    axis_angle = torch.tensor([0.0, math.radians(30), 0.0])
    shift = torch.tensor([0.01, -0.02, 0.03])
    pose = torch.cat([axis_angle, shift])[None]
    verts = demo_avatar.pose_mesh(torch.zeros(1, demo_avatar.expression_dim), pose)[0]
    skull = demo_avatar.head_weights == 1.0
    assert int(skull.sum()) > 1000
    rot = axis_angle_to_rotmat(axis_angle)
    p = demo_avatar.head_pivot
    expected = (demo_avatar.neutral_vertices[skull] - p) @ rot.T + p + shift
    torch.testing.assert_close(verts[skull], expected, atol=1e-6, rtol=0)
    # weight 0.5 -> half the angle (the neck twists smoothly)
    half = (demo_avatar.head_weights - 0.5).abs().argmin()
    w = float(demo_avatar.head_weights[half])
    expected_half = axis_angle_to_rotmat(axis_angle * w) @ (demo_avatar.neutral_vertices[half] - p) + p + shift
    torch.testing.assert_close(verts[half], expected_half, atol=1e-6, rtol=0)


def test_mouth_opening_code_moves_the_jaw_not_the_forehead(demo_avatar):
    neutral = demo_avatar.canonical()
    opened = demo_avatar.pose(_code_for(demo_avatar, jawOpen=1.0), torch.zeros(1, 6))
    drop = opened.vertices[0] - neutral.vertices[0]
    assert float(drop.norm(dim=-1).max()) > 0.02  # the jaw opens by centimetres
    from avatar_render.landmarks import DEMO_TOPOLOGY_VERTICES

    head = neutral.vertices[0][:DEMO_TOPOLOGY_VERTICES]  # the kit's head (teeth and bust follow its vertices)
    chin = head[:, 1].argmin()  # lowest vertex of the face region below the mouth moves down
    lower = head[:, 1] < head[chin, 1] + 0.06
    front = head[:, 2] > 0.04
    assert float(drop[:DEMO_TOPOLOGY_VERTICES][lower & front, 1].min()) < -0.01
    forehead = neutral.means[0][:, 1] > 0.05
    assert float((opened.means[0][forehead] - neutral.means[0][forehead]).norm(dim=-1).max()) < 1e-5


def test_template_posing_ignores_the_expression(demo_avatar):
    """with_expression=False (the paper's template-mesh normals): the neutral mesh, moved only by the head pose."""
    opened = _code_for(demo_avatar, jawOpen=1.0)
    rest = demo_avatar.pose_mesh(opened, torch.zeros(1, 6), with_expression=False)[0]
    torch.testing.assert_close(rest, demo_avatar.neutral_vertices, atol=1e-7, rtol=0)  # pivot round trip
    shift = torch.tensor([[0.0, 0.0, 0.0, 0.01, -0.02, 0.03]])
    moved = demo_avatar.pose_mesh(opened, shift, with_expression=False)[0]
    torch.testing.assert_close(moved, demo_avatar.neutral_vertices + shift[0, 3:], atol=1e-7, rtol=0)
    with_jaw = demo_avatar.pose_mesh(opened, shift)[0]
    assert float((with_jaw - moved).norm(dim=-1).max()) > 0.02  # the default still opens the jaw


def test_pose_is_batched_over_frames(demo_avatar):
    codes, poses = demo_avatar.capture_segment(10, 5)
    batched = demo_avatar.pose(codes, poses)
    single = demo_avatar.pose(codes[3:4], poses[3:4])
    torch.testing.assert_close(batched.means[3], single.means[0])
    assert batched.means.shape == (5, demo_avatar.num_gaussians, 3)


def test_bad_pose_inputs_are_rejected(demo_avatar):
    with pytest.raises(ValueError, match="128 dimensions"):
        demo_avatar.pose(torch.zeros(2, 64), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="3 expression codes for 2 head poses"):
        demo_avatar.pose(torch.zeros(3, 128), torch.zeros(2, 6))
    with pytest.raises(ValueError, match="finite"):
        demo_avatar.pose(torch.full((1, 128), float("nan")), torch.zeros(1, 6))


def test_capture_track_looks_like_a_person(demo_avatar):
    assert demo_avatar.num_capture_frames >= 512
    rig = demo_avatar.rig_weights(demo_avatar.capture_codes)
    labels = demo_avatar.expression_labels
    # codes reproduce the rig exactly (orthonormal map): blinks close the eyes, speech opens the jaw
    assert float(rig[:, labels.index("eyeBlinkLeft")].max()) > 0.8
    jaw = rig[:, labels.index("jawOpen")]
    assert float(jaw.max()) > 0.15 and float((jaw > 0.05).float().mean()) > 0.1
    yaw_deg = torch.rad2deg(demo_avatar.capture_poses[:, 1])
    assert float(yaw_deg.max() - yaw_deg.min()) > 15
    steps = (demo_avatar.capture_poses[1:] - demo_avatar.capture_poses[:-1]).abs()
    assert float(steps[:, :3].max()) < math.radians(4)  # smooth at 25 fps


def test_avatar_file_round_trip_is_exact(demo_avatar, tmp_path):
    path = save_avatar(demo_avatar, tmp_path / "x.avatar.safetensors")
    loaded = load_avatar(path)
    for name in (
        "neutral_vertices",
        "faces",
        "binding",
        "local_means",
        "sh",
        "capture_codes",
        "expression_map",
    ):
        assert torch.equal(getattr(loaded, name), getattr(demo_avatar, name)), name
    assert loaded.name == demo_avatar.name and loaded.expression_labels == demo_avatar.expression_labels


def _corrupt(demo_avatar, tmp_path, **changes):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = save_avatar(demo_avatar, tmp_path / "good.avatar.safetensors")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = f.metadata()
    for key, value in changes.items():
        if value is None:
            tensors.pop(key)
        else:
            tensors[key] = value(tensors[key])
    bad = tmp_path / "bad.avatar.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    return bad


def _with_nan(t):
    t = t.clone()
    t.view(-1)[7] = float("nan")
    return t


def _out_of_range(t):
    t = t.clone()
    t.view(-1)[0] = 10**6
    return t


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"local_means": _with_nan}, "field 'local_means' has 1 non-finite"),
        ({"faces": _out_of_range}, "field 'faces' indexes vertex 1000000"),
        ({"binding": _out_of_range}, "field 'binding' indexes triangle 1000000"),
        ({"head_weights": None}, "field 'head_weights' is missing"),
        ({"sh": lambda t: t[:-1]}, "field 'sh' has N="),
    ],
)
def test_bad_avatar_files_name_the_file_and_field(demo_avatar, tmp_path, change, message):
    bad = _corrupt(demo_avatar, tmp_path, **change)
    with pytest.raises(AvatarFormatError) as info:
        load_avatar(bad)
    assert "bad.avatar.safetensors" in str(info.value) and message in str(info.value)


def test_not_an_avatar_file(tmp_path):
    path = tmp_path / "junk.avatar.safetensors"
    path.write_bytes(b"not safetensors at all")
    with pytest.raises(AvatarFormatError, match="junk.avatar.safetensors"):
        load_avatar(path)


def test_unknown_id_lists_what_is_available():
    with pytest.raises(KeyError, match="spelled 'demo-0999'"):
        load_avatar("demo-999")  # one spelling per avatar: 3 digits for the kit's 16, 4 from 16 on
    with pytest.raises(FileNotFoundError, match="demo-000"):
        load_avatar("no-such-avatar")


def test_demo_avatars_are_distinct_and_deterministic():
    from avatar_render import demo

    a, b = load_avatar("demo-000"), load_avatar("demo-001")
    assert float((a.neutral_vertices - b.neutral_vertices).norm(dim=-1).max()) > 0.005  # face shape
    skin_a, skin_b = a.sh[:18000, 0].mean(0), b.sh[:18000, 0].mean(0)
    assert float((skin_a - skin_b).abs().max()) > 0.05  # skin tone
    looks = {demo.demo_look(i) for i in range(demo.NUM_DEMO_AVATARS)}
    assert len(looks) == demo.NUM_DEMO_AVATARS
    demo._build_demo_avatar.cache_clear()
    again = load_avatar("demo-000")
    assert torch.equal(again.local_means, a.local_means) and torch.equal(again.capture_codes, a.capture_codes)


def test_generated_demo_avatars():
    from avatar_render import demo

    a, b = load_avatar("demo-0800"), load_avatar("demo-0801")
    assert (a.name, b.name) == ("demo-0800", "demo-0801")
    # face shape: a convex mix of kit meshes, and not the same mix
    kit, _ = demo.load_kit()
    for avatar, index in ((a, 800), (b, 801)):
        weights = torch.from_numpy(demo.demo_shape_weights(index)).float()
        assert abs(float(weights.sum()) - 1) < 1e-6 and int((weights > 0).sum()) in (2, 3)
        expected = torch.einsum("k,kvc->vc", weights, kit["neutral_vertices"].float())
        head = expected.shape[0]  # the kit's head first; the teeth (teeth.py) come after its vertices
        assert torch.allclose(avatar.neutral_vertices[:head], expected, atol=1e-5)
    assert float((a.neutral_vertices - b.neutral_vertices).norm(dim=-1).max()) > 0.002
    look_a, look_b = demo.demo_look(800), demo.demo_look(801)
    assert look_a != look_b
    # their own capture tracks, and Gaussians placed differently
    assert float((a.capture_codes - b.capture_codes).abs().max()) > 0.1
    assert float((a.capture_poses - b.capture_poses).abs().max()) > 0.01
    assert not torch.equal(a.local_means[:100], b.local_means[:100])
    # deterministic: rebuilt from scratch, the same avatar
    demo._build_demo_avatar.cache_clear()
    again = load_avatar("demo-0801")
    assert torch.equal(again.sh, b.sh) and torch.equal(again.capture_codes, b.capture_codes)
    # any id up to 9999, one spelling each, and 802 ids for a paper-sized job
    ids = demo.demo_ids(802)
    assert ids[15] == "demo-015" and ids[16] == "demo-0016" and ids[-1] == "demo-0801" and len(set(ids)) == 802
    assert demo.demo_index("demo-9999") == 9999
    for bad in ("demo-0003", "demo-016", "demo-10000"):
        with pytest.raises((KeyError, FileNotFoundError)):
            load_avatar(bad)


def test_generated_looks_vary():
    from avatar_render import demo

    looks = [demo.demo_look(i) for i in range(16, 416)]
    assert len({look.skin for look in looks}) == 400  # continuous colours
    assert {look.hair_style for look in looks} == set(demo.HAIR_STYLES)
    skins = np.array([look.skin for look in looks])
    assert skins[:, 0].min() < 0.45 and skins[:, 0].max() > 0.85  # light to dark
    # the kit's 16 step through the palettes (7 hair styles since the strand hair; beards on ids 1, 6, 11)
    look = demo.demo_look(3)
    assert (look.skin, look.hair, look.eyes, look.hair_style) == (
        demo.SKIN_TONES[3],
        demo.HAIR_COLOURS[10 % 7],
        demo.EYE_COLOURS[17 % 6],
        "long",
    )
    # clothes come from a stream of their own: a palette colour within +-3 sigma of its 8 % jitter
    assert any(np.all(np.abs(np.array(look.garment) / np.array(c) - 1) < 0.25) for c in demo.GARMENT_COLOURS)
    necklines = {demo.demo_look(i).neckline for i in range(16, 416)}
    assert necklines == {"crew", "v"}
    assert len({demo.demo_look(i).garment for i in range(16)}) > 8  # identities dress differently
    assert [i for i in range(16) if demo.demo_look(i).beard] == [1, 6, 11]
    assert {demo.demo_look(i).hair_style for i in range(16)} == set(demo.HAIR_STYLES)


def test_near_twin_count():
    from avatar_render import demo

    kit = demo.near_twins(16)  # the kit's identities differ by 6 mm RMS and more
    assert kit["with_shape_twin"] == 0 and kit["with_twin"] == 0
    loose = demo.near_twins(200, shape_mm=1e6, skin=2, colour=2)  # everything alike but hair style and beard
    assert loose["with_twin"] == 200
