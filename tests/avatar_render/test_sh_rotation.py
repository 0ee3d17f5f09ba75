"""View-dependent colour: SH rotation (sh.rotate_sh), SH that turn with the head, and the demo skin's sheen."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from avatar_render.geometry import axis_angle_to_rotmat
from avatar_render.sh import rotate_sh, sh_to_rgb


def _random_rotations(count: int, generator: torch.Generator) -> torch.Tensor:  # [count, 3, 3] float64
    return axis_angle_to_rotmat(torch.randn(count, 3, generator=generator, dtype=torch.float64))


@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_rotated_coefficients_seen_from_the_rotated_direction_give_the_same_colour(degree):
    g = torch.Generator().manual_seed(degree)
    n = 64
    sh = torch.randn(n, (degree + 1) ** 2, 3, generator=g, dtype=torch.float64) * 0.3
    rot = _random_rotations(n, g)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    turned = rotate_sh(sh, rot)
    expected = sh_to_rgb(sh, dirs, degree)
    seen = sh_to_rgb(turned, torch.einsum("nij,nj->ni", rot, dirs), degree)
    torch.testing.assert_close(seen, expected, atol=1e-9, rtol=0)
    torch.testing.assert_close(turned[:, 0], sh[:, 0])  # band 0 (the mean colour) does not change


def test_degree_one_rotation_is_the_rotation_of_a_vector_in_gsplat_axis_order():
    # degree-1 basis C1 (-y, z, -x) = C1 P d with P below, so coefficients a turn to P R P^T a (hand derivation)
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([[0.0, -1, 0], [0, 0, 1], [-1, 0, 0]], dtype=torch.float64)
    rot = _random_rotations(5, g)
    sh = torch.randn(5, 4, 3, generator=g, dtype=torch.float64)
    expected = p @ rot @ p.T @ sh[:, 1:]
    torch.testing.assert_close(rotate_sh(sh, rot)[:, 1:], expected, atol=1e-10, rtol=0)


def test_rotation_gathered_by_index_equals_per_gaussian_rotation():
    g = torch.Generator().manual_seed(1)
    rot = _random_rotations(3, g)
    index = torch.tensor([2, 0, 0, 1, 2])
    sh = torch.randn(5, 9, 3, generator=g, dtype=torch.float64)
    torch.testing.assert_close(rotate_sh(sh, rot, index), rotate_sh(sh, rot[index]))


def test_view_dependent_colour_turns_with_the_head(demo_avatar):
    avatar = demo_avatar.to(dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    sh = torch.cat([avatar.sh[:, :1], torch.randn(avatar.sh.shape[0], 3, 3, generator=g, dtype=torch.float64)], 1)
    avatar = dataclasses.replace(avatar, sh=sh * 0.2)
    angle = torch.tensor([0.1, math.radians(40), -0.05], dtype=torch.float64)
    turned = avatar.pose(torch.zeros(1, avatar.expression_dim), torch.cat([angle, torch.zeros(3)])[None]).frame(0)
    still = avatar.canonical().frame(0)
    # Gaussians on the skull (all three vertices of their triangle fully carried by the head rotation)
    skull = (avatar.head_weights[avatar.faces[avatar.binding]] == 1.0).all(-1)
    assert int(skull.sum()) > 1000
    rot = axis_angle_to_rotmat(angle)
    dirs = torch.nn.functional.normalize(torch.randn(int(skull.sum()), 3, generator=g, dtype=torch.float64), dim=-1)
    before = sh_to_rgb(still.sh[skull], dirs, 1)
    after = sh_to_rgb(turned.sh[skull], dirs @ rot.T, 1)  # the same view direction, turned with the head
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
    # and a head that does not turn keeps its coefficients
    torch.testing.assert_close(still.sh, avatar.sh, atol=1e-9, rtol=0)


def test_demo_skin_is_brightest_seen_from_the_key_lights_mirror_direction(demo_avatar):
    parts = demo_avatar.metadata["gaussian_parts"]
    assert demo_avatar.sh.shape[1] == 4  # degree 1
    skin = slice(*parts["skin"])
    key = torch.tensor(demo_avatar.metadata["lighting"]["key_direction"], dtype=torch.float32)
    v = demo_avatar.neutral_vertices[demo_avatar.faces[demo_avatar.binding[skin]]]  # [N, 3 corners, 3]
    n = torch.nn.functional.normalize(
        torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1), dim=-1
    )  # CONVENTIONS 3's a1
    facing = n @ key
    sh = demo_avatar.sh[skin]
    lit = torch.nonzero((facing > 0.3) & (facing < 0.9) & (sh[:, 1:].abs().amax((1, 2)) > 1e-3))[:, 0]
    assert len(lit) > 500
    views = torch.nn.functional.normalize(torch.randn(4000, 3, generator=torch.Generator().manual_seed(3)), dim=-1)
    angles = []
    for i in lit[:: max(1, len(lit) // 200)].tolist():
        # view direction v from the point to the camera; gsplat evaluates SH at d = -v
        colour = sh_to_rgb(sh[i].expand(len(views), -1, -1), -views, 1).mean(-1)
        best = views[colour.argmax()]
        mirror = torch.nn.functional.normalize(2 * facing[i] * n[i] - key, dim=0)
        angles.append(math.degrees(math.acos(float((best @ mirror).clamp(-1, 1)))))
    # 4000 random views lie a few degrees apart
    assert sorted(angles)[len(angles) // 2] < 8.0
    for name, (start, stop) in parts.items():  # only the skin (face and neck) shines
        if name not in ("skin", "neck"):
            assert float(demo_avatar.sh[start:stop, 1:].abs().max()) == 0.0, name
