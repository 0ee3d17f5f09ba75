"""avatar_render: animatable 3D Gaussian head avatars bound to a guide mesh.

Public API (imported lazily so that `avatar-render --help` answers without loading torch):
  GaussianSet, read_ply, write_ply, PlyFormatError        -- Gaussians and INRIA 3DGS PLY files
  Camera, look_at_viewmat                                  -- OpenCV pinhole cameras
  render, RenderOutput                                     -- gsplat on CUDA, our PyTorch backend on CPU
  render_normals, encode_normals, decode_normals, vertex_normals, rasterize_mesh
  Avatar, PosedAvatar, load_avatar, save_avatar, AvatarFormatError, demo_ids
  LandmarkLayout, project_landmarks                        -- 2D landmarks (iBUG-68 on the demo topology)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "GaussianSet": "gaussians",
    "read_ply": "ply",
    "write_ply": "ply",
    "PlyFormatError": "ply",
    "Camera": "camera",
    "look_at_viewmat": "camera",
    "render": "rendering",
    "RenderOutput": "rendering",
    "render_normals": "normals",
    "encode_normals": "normals",
    "decode_normals": "normals",
    "vertex_normals": "normals",
    "rasterize_mesh": "mesh_raster",
    "Avatar": "avatar",
    "PosedAvatar": "avatar",
    "load_avatar": "avatar_io",
    "save_avatar": "avatar_io",
    "AvatarFormatError": "avatar_io",
    "demo_ids": "demo",
    "LandmarkLayout": "landmarks",
    "project_landmarks": "landmarks",
}

__all__ = [
    "Avatar",
    "AvatarFormatError",
    "Camera",
    "GaussianSet",
    "LandmarkLayout",
    "PlyFormatError",
    "PosedAvatar",
    "RenderOutput",
    "decode_normals",
    "demo_ids",
    "encode_normals",
    "load_avatar",
    "look_at_viewmat",
    "project_landmarks",
    "rasterize_mesh",
    "read_ply",
    "render",
    "render_normals",
    "save_avatar",
    "vertex_normals",
    "write_ply",
]

if TYPE_CHECKING:
    from .avatar import Avatar, PosedAvatar
    from .avatar_io import AvatarFormatError, load_avatar, save_avatar
    from .camera import Camera, look_at_viewmat
    from .demo import demo_ids
    from .gaussians import GaussianSet
    from .landmarks import LandmarkLayout, project_landmarks
    from .mesh_raster import rasterize_mesh
    from .normals import decode_normals, encode_normals, render_normals, vertex_normals
    from .ply import PlyFormatError, read_ply, write_ply
    from .rendering import RenderOutput, render


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'avatar_render' has no attribute {name!r}")
