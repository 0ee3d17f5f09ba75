"""Demo avatars' eyes and mouth: teeth on the jaw, hidden by closed lips, eyes that look and close, a dark mouth."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from avatar_render.camera import Camera
from avatar_render.gaussians import rgb_to_sh_dc
from avatar_render.rendering import render


def _code(avatar, **rig: float) -> torch.Tensor:  # [1, D]
    weights = torch.zeros(1, len(avatar.expression_labels))
    for name, value in rig.items():
        weights[0, avatar.expression_labels.index(name)] = value
    return avatar.codes_from_rig_weights(weights)


def _part(avatar, name: str) -> slice:
    start, stop = avatar.metadata["gaussian_parts"][name]
    return slice(start, stop)


def _posed_means(avatar, **rig: float) -> torch.Tensor:  # [N, 3]
    return avatar.pose(_code(avatar, **rig), torch.zeros(1, 6)).means[0]


def _marked(avatar, parts: list[str]):
    """The avatar with the named parts pure green and everything else mid grey."""
    rgb = torch.full((avatar.num_gaussians, 3), 0.5)
    for name in parts:
        rgb[_part(avatar, name)] = torch.tensor([0.0, 1.0, 0.0])
    return dataclasses.replace(avatar, sh=rgb_to_sh_dc(rgb)[:, None, :])


def _green_pixels(avatar, target: torch.Tensor, yaw_deg: float, size: int = 160, **rig: float) -> int:
    """Pure-green pixels seen by a portrait camera 30 cm from `target` (15 deg field of view)."""
    yaw = math.radians(yaw_deg)
    eye = target + 0.3 * torch.tensor([math.sin(yaw), 0.0, math.cos(yaw)])
    camera = Camera.look_at(eye[None], target, size, size, fov_deg=15.0)
    gaussians = avatar.pose(_code(avatar, **rig), torch.zeros(1, 6)).frame(0)
    image = render(gaussians, camera[0], backend="cpu", background=torch.ones(3)).rgb[0]
    return int(((image[..., 1] > 0.6) & (image[..., 0] < 0.3)).sum())


def test_every_gaussian_belongs_to_one_named_part(demo_avatar) -> None:
    ranges = sorted(demo_avatar.metadata["gaussian_parts"].values())
    assert ranges[0][0] == 0 and ranges[-1][1] == demo_avatar.num_gaussians
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))  # contiguous, no overlap
    for name in ("skin", "eye_left", "eye_right", "teeth_upper", "teeth_lower", "eye_highlight_left"):
        assert name in demo_avatar.metadata["gaussian_parts"]


def test_lower_teeth_ride_on_the_jaw_and_upper_teeth_on_the_skull(demo_avatar) -> None:
    neutral = _posed_means(demo_avatar)
    opened = _posed_means(demo_avatar, jawOpen=1.0)
    upper, lower = _part(demo_avatar, "teeth_upper"), _part(demo_avatar, "teeth_lower")
    drop = opened[lower] - neutral[lower]
    assert float(drop[:, 1].mean()) < -0.012  # the jaw opens the lower teeth by more than a centimetre
    assert float((opened[upper] - neutral[upper]).norm(dim=-1).max()) < 1e-5
    # the lower teeth follow the chin (the jaw), not the lips: a smile or a pucker leaves every tooth in place
    for rig in ({"mouthSmileLeft": 1.0, "mouthSmileRight": 1.0}, {"mouthPucker": 1.0}, {"mouthRollLower": 1.0}):
        moved = _posed_means(demo_avatar, **rig)
        teeth = slice(upper.start, lower.stop)
        assert float((moved[teeth] - neutral[teeth]).norm(dim=-1).max()) < 1e-5, rig
    chin = demo_avatar.landmark_layout.vertex_ids[8]  # iBUG-68 point 8: the tip of the chin
    chin_drop = (
        demo_avatar.pose_mesh(_code(demo_avatar, jawOpen=1.0), torch.zeros(1, 6))[0, chin]
        - (demo_avatar.neutral_vertices[chin])
    )
    assert float(drop[:, 1].mean()) == pytest.approx(float(chin_drop[1]), rel=0.6)


def test_closed_lips_hide_the_teeth_and_an_open_mouth_shows_them(demo_avatar) -> None:
    marked = _marked(demo_avatar, ["teeth_upper", "teeth_lower"])
    target = demo_avatar.pose(_code(demo_avatar), torch.zeros(1, 6)).means[0][_part(demo_avatar, "teeth_upper")]
    target = target.mean(0) + torch.tensor([0.0, 0.0, 0.01])
    for yaw in (0.0, 35.0, -35.0):
        assert _green_pixels(marked, target, yaw) == 0, yaw
    assert _green_pixels(marked, target, 0.0, jawOpen=0.6) > 40
    assert _green_pixels(marked, target, 0.0, jawOpen=0.3, mouthSmileLeft=0.8, mouthSmileRight=0.8) > 40


def test_eyes_follow_the_look_blendshapes_with_their_highlight(demo_avatar) -> None:
    neutral = _posed_means(demo_avatar)
    left, right = _part(demo_avatar, "eye_left"), _part(demo_avatar, "eye_right")
    spot = _part(demo_avatar, "eye_highlight_left")
    # the front of each eyeball (iris and pupil: the Gaussians facing the camera) moves toward where it looks
    for part, rig, sign in (
        (left, {"eyeLookOutLeft": 1.0}, +1),  # the subject's left is +X
        (left, {"eyeLookInLeft": 1.0}, -1),
        (right, {"eyeLookOutRight": 1.0}, -1),
    ):
        front = neutral[part][:, 2] > neutral[part][:, 2].max() - 0.003
        moved = _posed_means(demo_avatar, **rig)
        shift = float((moved[part][front, 0] - neutral[part][front, 0]).mean())
        assert sign * shift > 0.001, rig
    moved = _posed_means(demo_avatar, eyeLookOutLeft=1.0)
    assert float((moved[spot, 0] - neutral[spot, 0]).mean()) > 0.001  # the highlight is on the eyeball


def test_eyelids_close_over_the_whole_eye(demo_avatar) -> None:
    marked = _marked(demo_avatar, ["eye_left", "eye_highlight_left"])
    target = _posed_means(demo_avatar)[_part(demo_avatar, "eye_left")].mean(0) + torch.tensor([0.0, 0.0, 0.015])
    assert _green_pixels(marked, target, 0.0) > 50
    assert _green_pixels(marked, target, 0.0, eyeBlinkLeft=1.0) == 0
    assert _green_pixels(marked, target, 30.0, eyeBlinkLeft=1.0) == 0


def test_the_open_mouth_is_dark_inside_and_the_cornea_shines(demo_avatar) -> None:
    import json

    from avatar_render.demo import load_kit

    kit, meta = load_kit()
    mouth = kit["vertex_masks"][json.loads(meta["mask_labels"]).index("inside-mouth")]
    mouth = torch.cat([mouth, mouth.new_zeros(len(demo_avatar.neutral_vertices) - len(mouth))])
    skin = _part(demo_avatar, "skin")
    inside = torch.zeros(demo_avatar.num_gaussians, dtype=torch.bool)
    inside[skin] = (mouth[demo_avatar.faces[demo_avatar.binding[skin]]] > 0.5).any(-1)
    inside[_part(demo_avatar, "tongue")] = True  # the cavity seen through the lips: its walls and the tongue
    rgb = torch.full((demo_avatar.num_gaussians, 3), 0.5)
    rgb[inside] = torch.tensor([0.0, 1.0, 0.0])
    marked = dataclasses.replace(demo_avatar, sh=rgb_to_sh_dc(rgb)[:, None, :])
    centre = _posed_means(demo_avatar)[_part(demo_avatar, "teeth_upper")].mean(0) + torch.tensor([0.0, 0.0, 0.01])
    camera = Camera.look_at((centre + torch.tensor([0.0, 0.0, 0.3]))[None], centre, 160, 160, fov_deg=15.0)
    posed = demo_avatar.pose(_code(demo_avatar, jawOpen=0.6), torch.zeros(1, 6))
    shown = render(posed.frame(0), camera[0], backend="cpu", background=torch.ones(3)).rgb[0]
    mask = render(marked.pose(_code(demo_avatar, jawOpen=0.6), torch.zeros(1, 6)).frame(0), camera[0], backend="cpu")
    cavity = (mask.rgb[0][..., 1] > 0.6) & (mask.rgb[0][..., 0] < 0.3)
    assert int(cavity.sum()) > 100
    face = (mask.rgb[0][..., 0] > 0.4) & (mask.rgb[0][..., 1] < 0.6) & (mask.alpha[0][..., 0] > 0.99)
    assert float(shown[cavity].mean()) < 0.4 * float(shown[face].mean())
    # the corneal highlight is the brightest spot of the eye: near white, brighter than the eye without it (the
    # skin's sheen may glint as brightly on the lid, so only the eye's own pixels count)
    eye_target = _posed_means(demo_avatar)[_part(demo_avatar, "eye_left")].mean(0) + torch.tensor([0.0, 0.0, 0.015])
    camera = Camera.look_at((eye_target + torch.tensor([0.0, 0.0, 0.3]))[None], eye_target, 160, 160, fov_deg=8.0)
    opacity = demo_avatar.opacity_logits.clone()
    opacity[_part(demo_avatar, "eye_highlight_left")] = -20.0  # transparent: the eye as it would be without it
    without = dataclasses.replace(demo_avatar, opacity_logits=opacity)
    # the eye's pixels: where the eyeball and its highlight (marked green) are what the camera sees
    eye_rgb = torch.full((demo_avatar.num_gaussians, 3), 0.5)
    for part in ("eye_left", "eye_highlight_left"):
        eye_rgb[_part(demo_avatar, part)] = torch.tensor([0.0, 1.0, 0.0])
    eye_marked = dataclasses.replace(demo_avatar, sh=rgb_to_sh_dc(eye_rgb)[:, None, :])
    seen = render(eye_marked.canonical().frame(0), camera[0], backend="cpu").rgb[0]
    eye = (seen[..., 1] > 0.6) & (seen[..., 0] < 0.3)
    assert int(eye.sum()) > 200
    brightest = [
        float(render(avatar.canonical().frame(0), camera[0], backend="cpu").rgb[0].min(-1).values[eye].max())
        for avatar in (demo_avatar, without)
    ]
    assert brightest[0] > 0.8 and brightest[0] > brightest[1] + 0.05


def test_hair_has_volume_stays_out_of_the_face_and_follows_the_style() -> None:
    from avatar_render import load_avatar
    from avatar_render.demo import HAIR_STYLES

    def hair_height(avatar) -> torch.Tensor:  # [H] distance of each hair Gaussian above the skin, m
        means = avatar.canonical().means[0]
        skin = means[_part(avatar, "skin")]
        hair = means[_part(avatar, "hair")]
        return torch.cdist(hair, skin).min(-1).values

    long_hair, bald = load_avatar("demo-003"), load_avatar("demo-004")
    assert long_hair.metadata["look"]["hair_style"] == "long" and bald.metadata["look"]["hair_style"] == "bald"
    assert "hair" not in bald.metadata["gaussian_parts"]
    height = hair_height(long_hair)
    # layered: the outer strands stand a centimetre off the scalp, the inner ones lie on it
    assert float(height.quantile(0.9)) > 0.5 * HAIR_STYLES["long"].volume
    assert float(height.quantile(0.1)) < 0.005
    # strands are elongated along their direction (many times longer than thick)
    scales = long_hair.local_log_scales[_part(long_hair, "hair")].exp()
    assert float((scales.max(-1).values / scales.min(-1).values).median()) > 8
    # no hair in front of the eyes: nothing in the face's box below the brows
    eyes = long_hair.canonical().means[0][_part(long_hair, "eye_left")].mean(0)
    hair = long_hair.canonical().means[0][_part(long_hair, "hair")]
    in_face = (hair[:, 2] > eyes[2] - 0.02) & (hair[:, 0].abs() < 0.05) & (hair[:, 1] < eyes[1] + 0.01)
    assert int(in_face.sum()) == 0
    # and it is bound to the skull: a brow raise or a jaw drop leaves the hair where it was
    neutral = long_hair.canonical().means[0][_part(long_hair, "hair")]
    moved = _posed_means(long_hair, jawOpen=1.0)[_part(long_hair, "hair")]
    assert float((moved - neutral).norm(dim=-1).max()) < 1e-4
