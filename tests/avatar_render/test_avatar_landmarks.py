"""The iBUG-68 landmark layout on the demo guide mesh: projection, visibility, storage in avatar files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from avatar_render import Camera, load_avatar, save_avatar
from avatar_render.avatar_io import read_avatar_file
from avatar_render.landmarks import IBUG68, LandmarkLayout, project_landmarks

# iBUG pairs that are mirror images of each other (subject's right, subject's left)
MIRROR_PAIRS = [
    (0, 16),
    (4, 12),
    (17, 26),
    (21, 22),
    (31, 35),
    (36, 45),
    (39, 42),
    (37, 44),
    (41, 46),
    (48, 54),
    (50, 52),
    (58, 56),
    (60, 64),
]


@pytest.fixture(scope="module")
def avatar():
    return load_avatar("demo-003")


def _orbit_camera(yaw_deg: float, distance: float = 0.4, size: int = 128) -> Camera:
    yaw = math.radians(yaw_deg)
    eye = torch.tensor([[distance * math.sin(yaw), -0.03, distance * math.cos(yaw)]])
    return Camera.look_at(eye, torch.tensor([0.0, -0.03, 0.0]), size, size)


def test_demo_avatars_get_the_ibug68_layout_in_the_right_order(avatar):
    layout = avatar.landmark_layout
    assert layout.name == IBUG68 and layout.num_points == 68 and len(set(layout.vertex_ids)) == 68
    p = avatar.neutral_vertices[list(layout.vertex_ids)].double().numpy()
    for right, left in MIRROR_PAIRS:  # subject's right is -X: image-left in a frontal view
        assert p[right, 0] < -0.003 and p[left, 0] > 0.003, (right, left)
        np.testing.assert_allclose(p[right] * [-1, 1, 1], p[left], atol=2e-3)
    for mid in (8, 27, 30, 33, 51, 57, 62, 66):
        assert abs(p[mid, 0]) < 1e-3
    # vertical order of the face: brows above eyes above nose tip above mouth above chin
    assert p[19, 1] > p[37, 1] > p[30, 1] > p[51, 1] > p[57, 1] > p[8, 1]
    assert p[30, 2] == p[27:36, 2].max()  # the nose tip is the most forward nose point


def test_projected_landmarks_match_a_hand_projection(avatar):
    posed = avatar.canonical()
    # a camera with unequal focal lengths and an off-centre principal point, looking from the upper left
    K = torch.tensor([[300.0, 0.0, 70.25], [0.0, 320.0, 55.5], [0.0, 0.0, 1.0]])
    eye = np.array([-0.12, 0.05, 0.30])
    cam = Camera.look_at(torch.tensor(eye[None], dtype=torch.float32), torch.zeros(1, 3), 140, 120)
    uv, visible = posed.landmarks(K[None], cam.viewmat, 140, 120)
    assert uv.shape == (1, 1, 68, 2) and visible.shape == (1, 1, 68)
    # by hand: look-at basis (CONVENTIONS 1), world -> camera, pinhole
    f = -eye / np.linalg.norm(eye)
    r = np.cross(f, [0.0, 1.0, 0.0])
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    R = np.stack([r, d, f])  # rows: camera axes in world coordinates (R_c2w transposed)
    for k in (8, 30, 36, 54):
        X = avatar.neutral_vertices[avatar.landmark_layout.vertex_ids[k]].double().numpy()
        x, y, z = R @ (X - eye)
        expected = [300.0 * x / z + 70.25, 320.0 * y / z + 55.5]
        np.testing.assert_allclose(uv[0, 0, k].numpy(), expected, atol=2e-3)


def test_visibility_front_and_back(avatar):
    posed = avatar.canonical()
    cams = [_orbit_camera(0.0), _orbit_camera(180.0), _orbit_camera(90.0)]
    K = torch.cat([c.K for c in cams])
    viewmat = torch.cat([c.viewmat for c in cams])
    uv, visible = posed.landmarks(K, viewmat, 128, 128)
    front, back, side = visible[0]
    assert int(front.sum()) >= 60  # nearly all of the face, frontally
    assert not back.any()  # the whole layout is on the face: hidden by the head from behind
    # camera on the subject's left (+X): the left eye's outer corner shows, the right one's is hidden
    assert bool(side[45]) and not bool(side[36])
    # and every point is inside the image from behind too: invisibility comes from the z-buffer
    assert ((uv[0, 1] >= 0) & (uv[0, 1] < 128)).all()


def test_paired_frames_equal_the_full_product(avatar):
    codes, poses = avatar.capture_segment(10, 3)
    posed = avatar.pose(codes, poses)
    cams = [_orbit_camera(yaw) for yaw in (-20.0, 0.0, 35.0)]
    K, viewmat = torch.cat([c.K for c in cams]), torch.cat([c.viewmat for c in cams])
    uv_all, vis_all = posed.landmarks(K, viewmat, 128, 128)
    uv, vis = posed.landmarks(K, viewmat, 128, 128, pair_frames=True)
    assert uv.shape == (3, 68, 2)
    for t in range(3):
        torch.testing.assert_close(uv[t], uv_all[t, t])
        assert torch.equal(vis[t], vis_all[t, t])


def test_points_outside_the_image_or_behind_the_camera_are_invisible(avatar):
    vertices = avatar.neutral_vertices
    cam = _orbit_camera(0.0, distance=0.4, size=64)
    K = cam.K.clone()
    K[0, 0, 2] = 200.0  # principal point far right: everything lands outside the image
    _, visible = project_landmarks(vertices, avatar.faces, avatar.landmark_layout, K, cam.viewmat, 64, 64)
    assert not visible.any()
    inside_head = Camera.look_at(torch.tensor([[0.0, -0.03, 0.0]]), torch.tensor([0.0, -0.03, -1.0]), 64, 64)
    _, visible = project_landmarks(
        vertices, avatar.faces, avatar.landmark_layout, inside_head.K, inside_head.viewmat, 64, 64
    )
    assert not visible.any()  # the face is behind a camera at the head centre looking backwards


def _rewrite_header(path, change) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()["avatar"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    change(header)
    save_file(tensors, str(path), metadata={"avatar": json.dumps(header)})


def test_version_1_files_load_with_the_default_layout(avatar, tmp_path):
    path = save_avatar(avatar, tmp_path / "a.avatar.safetensors")

    def to_v1(header):
        header["format_version"] = 1
        del header["landmarks"]

    _rewrite_header(path, to_v1)
    loaded = read_avatar_file(path)
    assert loaded.landmark_layout.name == IBUG68
    assert loaded.landmark_layout.vertex_ids == avatar.landmark_layout.vertex_ids


def test_a_stored_layout_round_trips_and_bad_ones_are_named(avatar, tmp_path):
    from avatar_render import AvatarFormatError

    custom = LandmarkLayout("five", (1, 2, 3, 4, 5))
    moved = avatar.to()
    moved.landmark_layout = custom
    path = save_avatar(moved, tmp_path / "b.avatar.safetensors")
    assert read_avatar_file(path).landmark_layout == custom
    _rewrite_header(path, lambda h: h["landmarks"].update(vertex_ids=[1, 2, 99999]))
    with pytest.raises(AvatarFormatError, match=r"b\.avatar\.safetensors: field 'landmarks.vertex_ids'"):
        read_avatar_file(path)
