"""Neck and shoulders of the demo avatars (bust.py): attached to the head, still when the head turns, in the normals."""

from __future__ import annotations

import math

import pytest
import torch


def _pose(avatar, yaw_deg: float) -> torch.Tensor:  # [V, 3] guide mesh with the head turned by yaw_deg
    pose = torch.tensor([[0.0, math.radians(yaw_deg), 0.0, 0.0, 0.0, 0.0]])
    return avatar.pose_mesh(torch.zeros(1, avatar.expression_dim), pose)[0]


def _boundary_edges(faces: torch.Tensor) -> torch.Tensor:  # [B, 2] edges used by exactly one triangle
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    unique, counts = torch.unique(torch.sort(edges, dim=1).values, dim=0, return_counts=True)
    return unique[counts == 1]


def _bust_vertices(avatar) -> torch.Tensor:  # [V] bool: the bust's own vertices (after the head and teeth)
    from avatar_render.landmarks import demo_guide_vertex_counts

    head, with_teeth, with_bust = demo_guide_vertex_counts()
    assert len(avatar.neutral_vertices) == with_bust
    bust = torch.zeros(with_bust, dtype=torch.bool)
    bust[with_teeth:] = True
    return bust


def test_the_neck_opening_is_closed_by_the_bust(demo_avatar):
    # the only open boundary of skin + bust is the bust's bottom edge, 20 cm below the neck: no gap at the seam
    bust = _bust_vertices(demo_avatar)
    v = demo_avatar.neutral_vertices
    others = torch.zeros(len(v), dtype=torch.bool)
    others[4200:4736] = True  # the kit's tongue and eyes (vertices 4200 ...) and our teeth: separate pieces
    body = demo_avatar.faces[~others[demo_avatar.faces].any(-1)]
    open_edges = _boundary_edges(body)
    assert len(open_edges) > 0
    assert bust[open_edges].all(), "an open edge outside the bust: the seam at the neck is not closed"
    lowest = float(v[bust, 1].min())
    assert float(v[open_edges.flatten(), 1].max()) < lowest + 0.01  # all of them on the bottom ring


@pytest.mark.parametrize("yaw_deg", [45.0, -45.0])
def test_the_head_turns_on_the_neck_without_tearing_and_the_shoulders_stay(demo_avatar, yaw_deg):
    v0 = demo_avatar.neutral_vertices
    v1 = _pose(demo_avatar, yaw_deg)
    bust = _bust_vertices(demo_avatar)
    faces = demo_avatar.faces[bust[demo_avatar.faces].any(-1)]  # the bust and its seam with the neck
    edges = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    before = (v0[edges[:, 0]] - v0[edges[:, 1]]).norm(dim=-1)
    after = (v1[edges[:, 0]] - v1[edges[:, 1]]).norm(dim=-1)
    stretch = after / before
    assert float(stretch.max()) < 1.6 and float(stretch.min()) > 0.6, (float(stretch.min()), float(stretch.max()))
    shoulders = bust & (v0[:, 1] < float(v0[bust, 1].max()) - 0.06)
    assert int(shoulders.sum()) > 100
    assert float((v1[shoulders] - v0[shoulders]).norm(dim=-1).max()) < 1e-6  # the torso does not turn
    nose = int(torch.argmax(v0[:4200, 2]))  # the front-most skin vertex
    a, b = v0[nose] - demo_avatar.head_pivot, v1[nose] - demo_avatar.head_pivot
    turn = math.atan2(float(b[0]), float(b[2])) - math.atan2(float(a[0]), float(a[2]))
    assert math.degrees(turn) == pytest.approx(yaw_deg, abs=3.0)  # while the face turns with the head


def test_normal_maps_cover_the_shoulders_in_a_portrait_frame(demo_avatar):
    from avatar_render import render_normals
    from avatar_render.preview import turntable_cameras

    camera = turntable_cameras(1, 64)
    _, mask = render_normals(demo_avatar.neutral_vertices, demo_avatar.faces, camera)
    bottom = mask[0, -8:]  # the frame's bottom rows: chest and shoulders, wider than the neck
    assert float(bottom.float().mean()) > 0.6


def test_garment_and_neck_colours(demo_avatar):
    from avatar_render.gaussians import sh_dc_to_rgb

    parts = demo_avatar.metadata["gaussian_parts"]
    look = demo_avatar.metadata["look"]
    rgb = sh_dc_to_rgb(demo_avatar.sh[:, 0])
    garment = rgb[slice(*parts["garment"])].median(0).values
    neck = rgb[slice(*parts["neck"])].median(0).values
    # lit colours: the albedo's hue survives the baked light (channel ratios within 25 %)
    for colour, albedo in ((garment, look["garment"]), (neck, look["skin"])):
        albedo = torch.tensor(albedo)
        ratio = (colour / colour.sum()) / (albedo / albedo.sum())
        assert float((ratio - 1).abs().max()) < 0.25, (colour, albedo)
