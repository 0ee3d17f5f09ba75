"""Tests of the PyTorch mesh rasterizer and camera-space normal maps against independent expectations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from avatar_render.camera import Camera, intrinsics
from avatar_render.geometry import quat_to_rotmat
from avatar_render.mesh_raster import rasterize_mesh
from avatar_render.normals import decode_normals, encode_normals, render_normals, vertex_normals


# ---------------------------------------------------------------------------- helpers
def icosphere(
    subdivisions: int = 3, radius: float = 1.0, centre: tuple[float, float, float] = (0, 0, 0)
) -> tuple[Tensor, Tensor]:
    """Icosphere (float64 vertices [V, 3], faces [F, 3]) with outward (counter-clockwise) winding."""
    p = (1.0 + math.sqrt(5.0)) / 2.0
    verts = [
        [-1, p, 0],
        [1, p, 0],
        [-1, -p, 0],
        [1, -p, 0],
        [0, -1, p],
        [0, 1, p],
        [0, -1, -p],
        [0, 1, -p],
        [p, 0, -1],
        [p, 0, 1],
        [-p, 0, -1],
        [-p, 0, 1],
    ]
    faces = [
        [0, 11, 5],
        [0, 5, 1],
        [0, 1, 7],
        [0, 7, 10],
        [0, 10, 11],
        [1, 5, 9],
        [5, 11, 4],
        [11, 10, 2],
        [10, 7, 6],
        [7, 1, 8],
        [3, 9, 4],
        [3, 4, 2],
        [3, 2, 6],
        [3, 6, 8],
        [3, 8, 9],
        [4, 9, 5],
        [2, 4, 11],
        [6, 2, 10],
        [8, 6, 7],
        [9, 8, 1],
    ]
    verts = [list(map(float, v)) for v in verts]
    midpoint: dict[tuple[int, int], int] = {}  # edge -> index of its midpoint vertex

    def mid(a: int, b: int) -> int:
        key = (min(a, b), max(a, b))
        if key not in midpoint:
            midpoint[key] = len(verts)
            verts.append([(verts[a][i] + verts[b][i]) / 2 for i in range(3)])
        return midpoint[key]

    for _ in range(subdivisions):
        midpoint.clear()
        new_faces = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new_faces += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        faces = new_faces
    v = F.normalize(torch.tensor(verts, dtype=torch.float64), dim=-1)
    f = torch.tensor(faces, dtype=torch.long)
    # Make the winding outward independently of the table above.
    fn = torch.linalg.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=-1)
    inward = (fn * v[f].mean(1)).sum(-1) < 0
    f[inward] = f[inward][:, [0, 2, 1]]
    return v * radius + torch.tensor(centre, dtype=torch.float64), f


def pixel_rays(cam: Camera) -> tuple[Tensor, Tensor]:
    """World ray origins [C, 3] and unit directions [C, H, W, 3] through the pixel centres."""
    K, H, W = cam.K.double(), cam.height, cam.width
    centres = [torch.arange(n, dtype=torch.float64) + 0.5 for n in (H, W)]
    j, i = torch.meshgrid(*centres, indexing="ij")
    pix = torch.stack([i, j, torch.ones_like(i)], -1)  # [H, W, 3]
    d_cam = torch.einsum("cij,hwj->chwi", torch.linalg.inv(K), pix)
    rot = cam.viewmat.double()[:, :3, :3]
    d_world = torch.einsum("cji,chwj->chwi", rot, d_cam)  # R^T d
    return cam.position.double(), F.normalize(d_world, dim=-1)


def random_rigid(seed: int) -> Tensor:  # [4, 4] float64
    g = torch.Generator().manual_seed(seed)
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = quat_to_rotmat(torch.randn(4, generator=g, dtype=torch.float64))
    T[:3, 3] = torch.randn(3, generator=g, dtype=torch.float64)
    return T


def pinhole(width: int, height: int, f: float) -> Camera:
    """Identity-pose camera with focal length f px and centred principal point."""
    K = intrinsics(f, f, width / 2.0, height / 2.0)
    return Camera(K=K, viewmat=torch.eye(4), width=width, height=height)


def unproject(uv: list[list[float]], z: float, cam: Camera) -> Tensor:
    """Camera-space points [N, 3] (identity-pose camera) that project to pixel coordinates uv at depth z."""
    K = cam.K[0].double()
    uv_t = torch.tensor(uv, dtype=torch.float64)
    x = (uv_t[:, 0] - K[0, 2]) / K[0, 0] * z
    y = (uv_t[:, 1] - K[1, 2]) / K[1, 1] * z
    return torch.stack([x, y, torch.full_like(x, z)], -1)


def raster(v: Tensor, f: Tensor, cam: Camera, **kw):
    return rasterize_mesh(v, f, cam.viewmat, cam.K, cam.width, cam.height, **kw)


def angle_deg(a: Tensor, b: Tensor) -> Tensor:
    cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum(-1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos))


# ---------------------------------------------------------------------------- tests
def test_sphere_normals_match_analytic():
    centre, radius = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64), 0.15
    verts, faces = icosphere(3, radius, tuple(centre.tolist()))
    eye = centre + torch.tensor([0.12, 0.18, 0.35], dtype=torch.float64)
    cam = Camera.look_at(eye.float(), centre.float(), 128, 128, fov_deg=53.1)
    normals, mask = render_normals(verts.float(), faces, cam)
    assert normals.shape == (1, 128, 128, 3) and mask.shape == (1, 128, 128, 1)

    # Analytic: ray o + t d hits |x - c| = r at t = -b - sqrt(b^2 - |o-c|^2 + r^2), b = d.(o-c).
    origin, dirs = pixel_rays(cam)
    oc = origin[:, None, None] - centre
    b = (dirs * oc).sum(-1)
    disc = b * b - (oc * oc).sum(-1) + radius**2
    hit = disc > 0
    t = -b - disc.clamp_min(0).sqrt()
    n_world = (origin[:, None, None] + t[..., None] * dirs - centre) / radius
    n_cam = torch.einsum("cij,chwj->chwi", cam.viewmat.double()[:, :3, :3], n_world)

    got = mask[..., 0] > 0
    # Mask equals the analytic disc except at boundary pixels (1-pixel band around the silhouette).
    hit_f = hit.double().unsqueeze(1)
    dilated = F.max_pool2d(hit_f, 3, 1, 1)[:, 0] > 0
    eroded = -F.max_pool2d(-hit_f, 3, 1, 1)[:, 0] > 0
    assert hit.sum() > 2000
    assert not (got & ~dilated).any() and not (eroded & ~got).any()
    assert (got != hit).sum() <= 0.02 * hit.sum()

    both = got & hit
    err = angle_deg(normals.double()[both], n_cam[both])
    assert err.mean() < 1.5, err.mean()
    # Silhouette pixels see grazing rays, where the polyhedron and the sphere part ways: max inside.
    assert angle_deg(normals.double()[eroded], n_cam[eroded]).max() < 6.0
    assert err.max() < 12.0
    assert (normals[both][:, 2] < 0).all()  # the visible hemisphere faces the camera: n_z < 0
    assert torch.allclose(normals[both].norm(dim=-1), torch.ones(()), atol=1e-5)
    assert (normals[~got] == 0).all()
    # Flat shading: every pixel shows its own face's normal, close to the sphere normal.
    flat, flat_mask = render_normals(verts.float(), faces, cam, smooth=False)
    assert torch.equal(flat_mask, mask)
    assert angle_deg(flat.double()[both], n_cam[both]).mean() < 4.0


def test_depth_and_barycentrics():
    cam = pinhole(64, 48, 50.0)
    # Front-facing quad (normal towards the camera: -z) at z = 2 covering pixels 10..49 x 6..37.
    z = 2.0
    quad = unproject([[10, 6], [50, 6], [50, 38], [10, 38]], z, cam)
    faces = torch.tensor([[0, 3, 2], [0, 2, 1]])
    fr = raster(quad.float(), faces, cam)
    expect = torch.zeros(48, 64, dtype=torch.bool)
    expect[6:38, 10:50] = True
    assert torch.equal(fr.mask[0], expect)
    assert torch.allclose(fr.depth[0][expect], torch.tensor(z), atol=1e-5)
    assert (fr.depth[0][~expect] == 0).all() and (fr.bary[0][~expect] == 0).all()
    # Interpolating the projected vertex positions with the barycentrics gives the pixel centre.
    uv = torch.tensor([[10, 6], [50, 6], [50, 38], [10, 38]], dtype=torch.float32)
    jj, ii = torch.nonzero(expect, as_tuple=True)
    tri_uv = uv[faces[fr.face_ids[0, jj, ii]]]  # [N, 3, 2]
    interp = (fr.bary[0, jj, ii].unsqueeze(-1) * tri_uv).sum(1)
    assert torch.allclose(interp, torch.stack([ii, jj], -1).float() + 0.5, atol=1e-3)
    assert torch.allclose(fr.bary.sum(-1)[fr.mask], torch.ones(()), atol=1e-5)
    normals, _ = render_normals(quad.float(), faces, cam)
    assert torch.allclose(normals[0][expect], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)

    # Tilted triangle: barycentric interpolation of the 3D vertices (perspective-correct) must give
    # the point on the ray through the pixel centre, at the reported depth.
    tri = torch.tensor([[-0.6, -0.4, 1.5], [0.7, -0.3, 3.0], [0.0, 0.6, 2.2]], dtype=torch.float64)
    fr = raster(tri.float(), torch.tensor([[0, 1, 2]]), cam)
    jj, ii = torch.nonzero(fr.mask[0], as_tuple=True)
    assert jj.numel() > 300
    p = (fr.bary[0, jj, ii].double().unsqueeze(-1) * tri).sum(1)  # [N, 3] camera space
    assert torch.allclose(p[:, 2], fr.depth[0, jj, ii].double(), rtol=1e-5)
    K = cam.K[0].double()
    u = K[0, 0] * p[:, 0] / p[:, 2] + K[0, 2]
    v = K[1, 1] * p[:, 1] / p[:, 2] + K[1, 2]
    assert torch.allclose(u, ii.double() + 0.5, atol=2e-3) and torch.allclose(v, jj.double() + 0.5, atol=2e-3)


@pytest.mark.parametrize("near_first", [True, False])
def test_z_test_nearer_wins(near_first: bool):
    cam = pinhole(64, 64, 60.0)
    near = unproject([[8, 8], [40, 8], [40, 40], [8, 40]], 2.0, cam)  # pixels 8..39
    far = unproject([[24, 24], [56, 24], [56, 56], [24, 56]], 3.0, cam)  # pixels 24..55
    quad = torch.tensor([[0, 3, 2], [0, 2, 1]])
    verts = torch.cat([near, far]).float() if near_first else torch.cat([far, near]).float()
    faces = torch.cat([quad, quad + 4])
    fr = raster(verts, faces, cam)
    near_faces = (0, 1) if near_first else (2, 3)
    ys, xs = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    in_near = (xs >= 8) & (xs < 40) & (ys >= 8) & (ys < 40)
    in_far = (xs >= 24) & (xs < 56) & (ys >= 24) & (ys < 56)
    fid = fr.face_ids[0]
    assert torch.isin(fid[in_near], torch.tensor(near_faces)).all()
    assert not torch.isin(fid[in_far & ~in_near], torch.tensor(near_faces)).any()
    assert (fid[~(in_near | in_far)] == -1).all()
    assert torch.allclose(fr.depth[0][in_near], torch.tensor(2.0)) and torch.allclose(
        fr.depth[0][in_far & ~in_near], torch.tensor(3.0)
    )
    # The z-test holds both ways round: back-facing (reversed winding) nearer quad still wins.
    fr_rev = raster(verts, faces[:, [0, 2, 1]], cam)
    assert torch.equal(fr_rev.face_ids, fr.face_ids)


def test_equal_depth_tie_goes_to_lowest_face():
    cam = pinhole(32, 32, 30.0)
    quad = unproject([[4, 4], [28, 4], [28, 28], [4, 28]], 1.0, cam).float()
    faces = torch.tensor([[0, 3, 2], [0, 2, 1]])
    # Same geometry twice (duplicated vertices): the lower face index must win, whatever the order.
    fr = raster(torch.cat([quad, quad]), torch.cat([faces, faces + 4]), cam)
    assert set(fr.face_ids[fr.mask].unique().tolist()) == {0, 1}


def test_no_holes_or_double_hits_on_shared_edges():
    cam = pinhole(64, 64, 64.0)
    # Pixel-space fan around an interior vertex; edges pass exactly through many pixel centres
    # (diagonals of slope 1 and 2 through (k + 0.5, .)), one triangle has the opposite winding.
    uv = [[8.0, 8.0], [56.0, 8.0], [56.0, 56.0], [8.0, 56.0], [32.5, 32.5], [8.5, 0.5]]
    verts = unproject(uv, 1.0, cam).float()
    faces = torch.tensor([[4, 0, 1], [4, 2, 1], [4, 2, 3], [4, 3, 0], [0, 5, 1]])
    single = torch.stack([raster(verts, faces[k : k + 1], cam).mask[0] for k in range(len(faces))])
    coverage = single.sum(0)
    assert coverage.max() == 1  # no double hits
    # No holes: the union is exactly the pixels whose centres are inside the outer polygon
    # (outer edges pass between pixel centres except the two edges to vertex 5).
    ys, xs = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    square = (xs > 8) & (xs < 56) & (ys > 8) & (ys < 56)
    assert torch.equal(coverage.bool() & ~single[4], square)
    # The whole mesh in one call covers exactly the union, each pixel with the triangle that owns it.
    fr = raster(verts, faces, cam)
    assert torch.equal(fr.mask[0], coverage.bool())
    owner = torch.where(coverage.bool(), single.long().argmax(0), torch.full_like(coverage, -1))
    assert torch.equal(fr.face_ids[0], owner)


def test_watertight_with_rounded_vertices():
    """A tilted grid whose edges pass (mathematically) through pixel centres; float32 rounding of
    the projected vertices puts those centres within rounding error of the edges, on either side."""
    g = torch.Generator().manual_seed(1)
    W = H = 64
    cam = Camera(K=intrinsics(57.3, 57.3, 31.7, 32.1), viewmat=torch.eye(4), width=W, height=H)
    n = 13  # 13 x 13 vertices at pixel centres 4k + 6.5
    jj, ii = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    uv = torch.stack([4.0 * ii + 6.5, 4.0 * jj + 6.5], -1).reshape(-1, 2).double()
    z = 1.3 + 0.011 * uv[:, 0] - 0.007 * uv[:, 1]  # a tilted plane, so projection rounds
    K = cam.K[0].double()
    x, y = (uv[:, 0] - K[0, 2]) / K[0, 0] * z, (uv[:, 1] - K[1, 2]) / K[1, 1] * z
    verts = torch.stack([x, y, z], -1).float()
    quads = (jj[:-1, :-1] * n + ii[:-1, :-1]).reshape(-1)
    a, b, c, d = quads, quads + 1, quads + n + 1, quads + n  # corners in order around the cell
    alt = torch.rand(len(quads), generator=g) < 0.5  # random diagonal per cell
    t1 = torch.where(alt[:, None], torch.stack([a, b, c], -1), torch.stack([a, b, d], -1))
    t2 = torch.where(alt[:, None], torch.stack([a, c, d], -1), torch.stack([b, c, d], -1))
    faces = torch.cat([t1, t2])
    flip = torch.rand(len(faces), generator=g) < 0.5  # mixed windings
    faces[flip] = faces[flip][:, [0, 2, 1]]
    # Count how many triangles claim each pixel. Triangles of cells with the same (i, j) parity and
    # the same half share no vertex, so each of these 8 groups can go through one call without the
    # z-test hiding a double hit.
    cell_group = ((ii[:-1, :-1] % 2) * 2 + (jj[:-1, :-1] % 2)).reshape(-1)
    group = torch.cat([cell_group, cell_group + 4])
    coverage = torch.zeros(H, W, dtype=torch.long)
    for k in range(8):
        coverage += raster(verts, faces[group == k], cam).mask[0].long()
    assert coverage.max() == 1  # no double hits
    # No holes: every pixel centre strictly inside the grid's outer boundary is covered.
    centres = torch.arange(W) + 0.5
    inner = (centres > 6.5) & (centres < 4.0 * (n - 1) + 6.5)
    assert (coverage[inner[:, None] & inner[None, :]] == 1).all()
    assert torch.equal(raster(verts, faces, cam).mask[0], coverage.bool())


def test_rigid_motion_of_mesh_and_camera_leaves_normals_unchanged():
    verts, faces = icosphere(2, 0.2, (0.0, 0.05, 0.0))
    verts = verts * torch.tensor([1.0, 1.3, 0.8], dtype=torch.float64)  # an ellipsoid: not rotation invariant
    cam = Camera.look_at(torch.tensor([[0.3, 0.1, 0.5], [-0.4, 0.0, 0.4]]), torch.zeros(3), 96, 96)
    T = random_rigid(3)
    verts_t = verts @ T[:3, :3].T + T[:3, 3]
    cam_t = Camera(K=cam.K, viewmat=(cam.viewmat.double() @ torch.linalg.inv(T)).float(), width=96, height=96)
    n0, m0 = render_normals(verts.float(), faces, cam)
    n1, m1 = render_normals(verts_t.float(), faces, cam_t)
    assert (m0 != m1).sum() <= 0.002 * m0.numel() and m0.sum() > 2000
    both = (m0 * m1)[..., 0] > 0
    assert angle_deg(n0[both], n1[both]).max() < 0.1


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    n = F.normalize(torch.randn(1000, 3, generator=g), dim=-1)
    rgb = encode_normals(n)
    assert rgb.dtype == torch.uint8
    assert torch.equal(rgb, torch.round((n + 1) / 2 * 255).to(torch.uint8))
    assert ((2.0 * rgb / 255.0 - 1.0) - n).abs().max() <= 1.0 / 255 + 1e-6  # quantisation
    back = decode_normals(rgb)  # renormalised: within the quantisation cell's angular radius
    assert angle_deg(back, n).max() <= math.degrees(math.sqrt(3.0) / 255)
    assert (back - n).abs().max() <= 2.0 / 255
    assert torch.allclose(back.norm(dim=-1), torch.ones(()), atol=1e-6)
    assert torch.allclose(decode_normals(rgb.float() / 255), back)
    # Background: mask 0 (or a zero normal without mask) encodes as black, which decodes to zero.
    mask = (torch.arange(1000) % 3 != 0).float().unsqueeze(-1)
    enc = encode_normals(n * mask, mask)
    assert (enc[mask[:, 0] == 0] == 0).all() and torch.equal(enc[mask[:, 0] > 0], rgb[mask[:, 0] > 0])
    assert torch.equal(encode_normals(n * mask), enc)
    dec = decode_normals(enc)
    assert (dec[mask[:, 0] == 0] == 0).all()
    noisy_black = torch.tensor([[3, 0, 5]], dtype=torch.uint8)  # codec noise on the background
    assert (decode_normals(noisy_black) == 0).all()


def test_per_camera_vertices_match_shared():
    verts, faces = icosphere(2, 0.2)
    eyes = torch.tensor([[0.0, 0.0, 0.6], [0.5, 0.2, -0.3], [0.0, 0.6, 0.1]])
    cam = Camera.look_at(eyes, torch.zeros(3), 64, 48)
    v = verts.float()
    n_shared, m_shared = render_normals(v, faces, cam)
    n_per, m_per = render_normals(v.expand(3, -1, -1).clone(), faces, cam)
    assert torch.equal(m_shared, m_per) and torch.equal(n_shared, n_per)
    # Per-camera vertices really are per camera: camera 1 sees a moved mesh.
    moved = v.expand(3, -1, -1).clone()
    moved[1] += torch.tensor([0.05, 0.0, 0.0])
    n_mv, _ = render_normals(moved, faces, cam)
    assert torch.equal(n_mv[[0, 2]], n_shared[[0, 2]]) and not torch.equal(n_mv[1], n_shared[1])
    n_single, _ = render_normals(moved[1], faces, cam[1])
    assert torch.equal(n_mv[1:2], n_single)


def test_chunking_and_near_plane():
    verts, faces = icosphere(2, 0.2)
    cam = Camera.look_at(torch.tensor([0.1, 0.2, 0.7]), torch.zeros(3), 80, 80)
    full = raster(verts.float(), faces, cam)
    small = raster(verts.float(), faces, cam, max_pairs=97)  # many chunks, some single triangles
    assert torch.equal(full.face_ids, small.face_ids) and torch.equal(full.bary, small.bary)
    # A triangle with a vertex behind the near plane is skipped; the rest still renders.
    cam0 = pinhole(32, 32, 30.0)
    tri = torch.tensor(
        [
            [-0.5, -0.5, 1.0],
            [0.5, -0.5, 1.0],
            [0.0, 0.5, -0.1],
            [-0.2, -0.2, 1.0],
            [0.2, -0.2, 1.0],
            [0.0, 0.2, 1.0],
        ]
    )
    fr = raster(tri, torch.tensor([[0, 1, 2], [3, 4, 5]]), cam0)
    assert fr.mask.any() and set(fr.face_ids[fr.mask].unique().tolist()) == {1}


def test_vertex_normals_batched_and_unit():
    verts, faces = icosphere(1, 1.0)
    vn = vertex_normals(verts, faces)
    assert torch.allclose(vn, verts, atol=1e-12 + 0.05)  # sphere: normal ~ position
    assert torch.allclose(vn.norm(dim=-1), torch.ones((), dtype=torch.float64))
    batch = torch.stack([verts, 2.0 * verts])
    assert torch.allclose(vertex_normals(batch, faces), vn.expand(2, -1, -1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    verts, faces = icosphere(3, 0.2)
    cam = Camera.look_at(torch.tensor([[0.1, 0.2, 0.7], [0.5, 0.0, 0.3]]), torch.zeros(3), 128, 96)
    n_cpu, m_cpu = render_normals(verts.float(), faces, cam)
    n_gpu, m_gpu = render_normals(verts.float().cuda(), faces.cuda(), cam)
    assert n_gpu.is_cuda and (m_gpu.cpu() != m_cpu).sum() <= 4
    both = (m_cpu * m_gpu.cpu())[..., 0] > 0
    assert angle_deg(n_cpu[both], n_gpu.cpu()[both]).max() < 0.05
