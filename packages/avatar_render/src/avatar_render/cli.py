"""`avatar-render`: preview, inspect and export the animatable Gaussian head avatars.

Examples:
  avatar-render preview --avatar demo-003 --out sheet.png      # turntable sheet: RGB + normals, neutral + expressive
  avatar-render info demo-003                                   # sizes, rig, capture track, provenance
  avatar-render info my_head.avatar.safetensors
  avatar-render export-ply demo-003 --frame 120 --out x.ply      # posed Gaussians of capture frame 120, INRIA PLY
  avatar-render list                                            # the kit's 16 demo avatars
  avatar-render list --count 802 > ids.txt                      # 802 ids (demo-000 ... demo-015, demo-0016 ...)

Demo ids: demo-000 ... demo-015 (the kit's identities) and demo-0016 ... demo-9999 (generated: face shape mixed
from the kit's meshes, their own colours, hair and capture track); each builds in about a second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avatar-render", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    preview = sub.add_parser("preview", help="render a turntable contact sheet (RGB and normals) to PNG")
    preview.add_argument(
        "--avatar", required=True, help="demo id (demo-000 ... demo-015, demo-0016 ... demo-9999) or avatar file"
    )
    preview.add_argument("--out", required=True, type=Path, help="output PNG path")
    preview.add_argument("--views", type=int, default=6, help="views around the head (default 6)")
    preview.add_argument("--size", type=int, default=256, help="pixels per view (default 256)")
    preview.add_argument(
        "--backend",
        choices=["auto", "cpu", "gsplat"],
        default="auto",
        help="splatting backend: gsplat needs CUDA; auto picks it when available",
    )

    info = sub.add_parser("info", help="print what an avatar holds")
    info.add_argument("avatar", help="demo id or avatar file")

    export = sub.add_parser("export-ply", help="write the posed Gaussians of one capture frame as INRIA 3DGS PLY")
    export.add_argument("avatar", help="demo id or avatar file")
    export.add_argument("--frame", type=int, default=0, help="capture-track frame (default 0)")
    export.add_argument("--neutral", action="store_true", help="zero expression and identity pose instead")
    export.add_argument("--out", required=True, type=Path, help="output .ply path")

    listing = sub.add_parser("list", help="list demo avatar ids with their looks (an ids file with --ids-only)")
    listing.add_argument("--count", type=int, default=16, help="how many ids, from demo-000 (default 16, up to 10000)")
    listing.add_argument("--ids-only", action="store_true", help="one id per line, nothing else")
    listing.add_argument(
        "--check-twins", action="store_true", help="count ids with a near twin (similar shape and look) instead"
    )

    save = sub.add_parser("save", help="write an avatar (e.g. a demo) to an avatar file")
    save.add_argument("avatar", help="demo id or avatar file")
    save.add_argument("--out", required=True, type=Path, help="output .avatar.safetensors path")
    return parser


def _check_output(path: Path) -> None:
    if not path.parent.exists():
        raise SystemExit(f"avatar-render: output folder '{path.parent}' does not exist")


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        return _run(args)
    except (FileNotFoundError, KeyError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"avatar-render: error: {message}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "list":
        from .demo import demo_ids, demo_look, near_twins

        if args.check_twins:
            report = near_twins(args.count)
            print(
                f"{report['count']} ids: {report['with_twin']} have a near twin (face shape within 1 mm RMS, same hair "
                f"style, skin within 0.03, hair and eyes within 0.05 per channel); {report['with_shape_twin']} have a "
                f"face-shape twin alone; median distance to the nearest other face shape "
                f"{report['median_nearest_shape_mm']:.2f} mm"
            )
            return 0
        lines = []
        for i, demo_id in enumerate(demo_ids(args.count)):
            if args.ids_only:
                lines.append(demo_id)
                continue
            look = demo_look(i)
            lines.append(f"{demo_id}  hair {look.hair_style:<6}  skin {look.skin}  eyes {look.eyes}")
        print("\n".join(lines))
        return 0

    from .avatar_io import load_avatar

    if args.command == "preview":
        from .preview import contact_sheet, save_png

        _check_output(args.out)
        avatar = load_avatar(args.avatar)
        sheet = contact_sheet(avatar, num_views=args.views, size_px=args.size, backend=args.backend)
        save_png(sheet, args.out)
        print(
            f"wrote {args.out} ({sheet.shape[1]}x{sheet.shape[0]}: rows neutral RGB, neutral normals, "
            "expressive RGB, expressive normals)"
        )
        return 0

    avatar = load_avatar(args.avatar)
    if args.command == "info":
        _print_info(avatar)
        return 0
    if args.command == "export-ply":
        import torch

        from .ply import write_ply

        _check_output(args.out)
        if args.neutral:
            posed = avatar.canonical()
        else:
            if not 0 <= args.frame < avatar.num_capture_frames:
                raise ValueError(
                    f"--frame {args.frame} is outside the capture track (0 ... {avatar.num_capture_frames - 1})"
                )
            codes, poses = avatar.capture_segment(args.frame, 1)
            posed = avatar.pose(codes, poses)
        with torch.no_grad():
            write_ply(posed.frame(0), args.out)
        print(f"wrote {args.out} ({avatar.num_gaussians} Gaussians)")
        return 0
    if args.command == "save":
        from .avatar_io import save_avatar

        _check_output(args.out)
        save_avatar(avatar, args.out)
        print(f"wrote {args.out}")
        return 0
    raise AssertionError(args.command)


def _print_info(avatar) -> None:
    import torch

    lines = [
        f"name:              {avatar.name}",
        f"guide mesh:        {avatar.neutral_vertices.shape[0]} vertices, {avatar.faces.shape[0]} triangles",
        f"gaussians:         {avatar.num_gaussians} (SH degree {int(avatar.sh.shape[1] ** 0.5) - 1})",
        f"expression code:   {avatar.expression_dim}-d -> {avatar.expression_basis.shape[0]} blendshapes",
        f"head pivot (m):    {[round(v, 4) for v in avatar.head_pivot.tolist()]}",
        f"capture track:     {avatar.num_capture_frames} frames at {avatar.capture_fps:g} fps",
        f"bounding box (m):  {[round(v, 3) for v in avatar.neutral_vertices.amin(0).tolist()]} .. "
        f"{[round(v, 3) for v in avatar.neutral_vertices.amax(0).tolist()]}",
        "landmarks:         "
        + (
            f"{avatar.landmark_layout.name} ({avatar.landmark_layout.num_points} guide-mesh vertices)"
            if avatar.landmark_layout
            else "none"
        ),
    ]
    rig = avatar.rig_weights(avatar.capture_codes)
    if avatar.expression_labels:
        top = torch.argsort(rig.mean(0), descending=True)[:5].tolist()
        lines.append(
            "most active rig:   " + ", ".join(f"{avatar.expression_labels[i]} {rig[:, i].mean():.2f}" for i in top)
        )
    for key, value in avatar.metadata.items():
        if key == "identity" and isinstance(value, dict):
            value = f"phenotype {value.get('phenotype')}; {len(value.get('local_changes', {}))} local shape changes"
        lines.append(f"{key + ':':<19}{value}")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
