"""Baked lighting: ambient occlusion and shadows from depth maps of the mesh, against geometry whose answer is
known (a sphere: nothing occludes its outside, its centre is seen from nowhere, its far side is in its own
shadow), and the demo avatars really shaded (key light in front vs behind, occluded mouth vs open forehead)."""

from __future__ import annotations

import math

import pytest
import torch

from avatar_render.shading import Lighting, ambient_occlusion, bake_lighting, key_shadow, smooth_over_mesh


def _sphere(radius: float = 0.1, rings: int = 24, segments: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    """A closed UV sphere, outward winding irrelevant (the rasterizer draws both sides)."""
    verts = [(0.0, radius, 0.0)]
    for i in range(1, rings):
        theta = math.pi * i / rings
        for j in range(segments):
            phi = 2 * math.pi * j / segments
            verts.append(
                (
                    radius * math.sin(theta) * math.cos(phi),
                    radius * math.cos(theta),
                    radius * math.sin(theta) * math.sin(phi),
                )
            )
    verts.append((0.0, -radius, 0.0))
    faces = []
    for j in range(segments):
        faces.append((0, 1 + j, 1 + (j + 1) % segments))
    for i in range(rings - 2):
        a, b = 1 + i * segments, 1 + (i + 1) * segments
        for j in range(segments):
            k = (j + 1) % segments
            faces += [(a + j, b + j, b + k), (a + j, b + k, a + k)]
    last, bottom = 1 + (rings - 2) * segments, len(verts) - 1
    for j in range(segments):
        faces.append((last + j, bottom, last + (j + 1) % segments))
    return torch.tensor(verts), torch.tensor(faces)


def test_outside_of_a_sphere_is_unoccluded_and_its_centre_unseen() -> None:
    vertices, faces = _sphere()
    dirs = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    normals = dirs / dirs.norm(dim=-1, keepdim=True)
    outside = 0.103 * normals  # 3 mm above the surface
    assert ambient_occlusion(vertices, faces, outside, normals).min() > 0.97
    centre = torch.zeros(5, 3)
    assert ambient_occlusion(vertices, faces, centre, normals[:5]).max() == 0.0


def test_the_far_side_of_a_sphere_is_in_its_own_shadow() -> None:
    vertices, faces = _sphere()
    light = torch.tensor([0.0, 0.3, 1.0])
    light = light / light.norm()
    lit, dark = 0.103 * light, -0.103 * light
    shadow = key_shadow(vertices, faces, torch.stack([lit, dark]), light)
    assert shadow[0] == 1.0 and shadow[1] == 0.0


@pytest.fixture(scope="module")
def face_gaussians(demo_avatar):
    """Front-facing head-skin Gaussians of the neutral demo avatar: canonical centres, normals, albedo stand-in."""
    from avatar_render.geometry import triangle_frames

    rot, centre, scale = triangle_frames(demo_avatar.neutral_vertices.double(), demo_avatar.faces)
    tri = demo_avatar.binding
    points = (rot[tri] @ (demo_avatar.local_means.double() * scale[tri, None])[..., None]).squeeze(-1) + centre[tri]
    normals = rot[tri][..., 1]
    start, stop = demo_avatar.metadata["gaussian_parts"]["skin"]  # the head's skin (the bust's chest faces +Z too)
    skin = torch.zeros(len(tri), dtype=torch.bool)
    skin[start:stop] = True
    front = (normals[:, 2] > 0.8) & skin
    return points[front].float(), normals[front].float(), tri[front], front


def test_key_light_behind_the_head_darkens_the_face(demo_avatar, face_gaussians) -> None:
    points, normals, _, _ = face_gaussians
    grey = torch.full((len(points), 3), 0.6)
    args = (grey, points, normals, demo_avatar.neutral_vertices, demo_avatar.faces)
    front = bake_lighting(*args, Lighting(key_direction=(0.3, 0.3, 0.9), fill_direction=(-0.6, 0.0, 0.8)))
    behind = bake_lighting(*args, Lighting(key_direction=(0.3, 0.3, -0.9), fill_direction=(-0.6, 0.0, 0.8)))
    assert float(behind.mean()) < 0.7 * float(front.mean())
    # the same Gaussian is darker with the light behind, for (nearly) every face Gaussian
    assert float((behind.mean(-1) < front.mean(-1)).float().mean()) > 0.95


def test_occlusion_varies_over_the_face(demo_avatar) -> None:
    """The inside of the mouth (the kit's 'inside-mouth' region) is far more occluded than open, forward-facing
    skin (cheeks, forehead, nose): AO computed on the guide mesh really varies over the face."""
    import json

    from avatar_render.demo import load_kit
    from avatar_render.geometry import triangle_frames

    kit, meta = load_kit()
    mouth = kit["vertex_masks"][json.loads(meta["mask_labels"]).index("inside-mouth")]
    vertices, faces = demo_avatar.neutral_vertices.double(), demo_avatar.faces
    mouth = torch.cat([mouth, mouth.new_zeros(len(vertices) - len(mouth))])  # the teeth are not in the kit's masks
    rot, centre, _ = triangle_frames(vertices, faces)
    normals = rot[..., 1]
    inside = (mouth[faces] > 0.5).all(-1)
    open_skin = (normals[:, 2] > 0.9) & (mouth[faces] == 0).all(-1) & (centre[:, 2] > centre[:, 2].max() - 0.04)
    assert inside.sum() > 10 and open_skin.sum() > 10
    points = torch.cat([centre[inside], centre[open_skin]]).float()
    n = torch.cat([normals[inside], normals[open_skin]]).float()
    ao = ambient_occlusion(vertices.float(), faces, points + 0.003 * n, n)
    k = int(inside.sum())
    assert float(ao[:k].mean()) < float(ao[k:].mean()) - 0.3


def test_smoothing_keeps_constants_and_averages_neighbours() -> None:
    faces = torch.tensor([[0, 1, 2], [1, 2, 3], [4, 5, 6]])  # two triangles sharing an edge, one apart
    triangles = torch.tensor([0, 0, 1, 2])
    constant = smooth_over_mesh(torch.full((4,), 0.7), triangles, faces, 7)
    torch.testing.assert_close(constant, torch.full((4,), 0.7))
    mixed = smooth_over_mesh(torch.tensor([0.0, 0.0, 1.0, 5.0]), triangles, faces, 7, rings=1)
    assert 0.0 < float(mixed[0]) < 1.0 and 0.0 < float(mixed[2]) < 1.0  # neighbours blend
    assert float(mixed[3]) == pytest.approx(5.0)  # a separate piece keeps its own value


def test_demo_avatars_carry_their_light(demo_avatar, face_gaussians) -> None:
    """The cheek on the key light's side is brighter than the mirrored cheek (same skin albedo): the light named
    in the avatar's metadata is baked into its colours."""
    from avatar_render.gaussians import sh_dc_to_rgb

    light = demo_avatar.metadata["lighting"]
    key_x = light["key_direction"][0]
    points, _, _, front = face_gaussians
    brightness = sh_dc_to_rgb(demo_avatar.sh[front, 0]).mean(-1)
    eyes_y = float(points[:, 1].quantile(0.6))
    cheek = (points[:, 0].abs() > 0.03) & (points[:, 0].abs() < 0.06) & (points[:, 1] < eyes_y)
    key_side = cheek & (torch.sign(points[:, 0]) == math.copysign(1.0, key_x))
    other_side = cheek & ~key_side
    assert key_side.sum() > 20 and other_side.sum() > 20
    assert float(brightness[key_side].mean()) > 1.1 * float(brightness[other_side].mean())
