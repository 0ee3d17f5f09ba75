"""Which avatars a job renders: the ids file, and resolving ids to demo avatars or avatar files."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
AVATAR_SUFFIX = ".avatar.safetensors"


class AvatarListError(ValueError):
    """A bad ids file or an id that names no avatar."""


def read_avatar_ids(path: str | Path) -> list[str]:
    """Ids, one per line; blank lines and `#` comments (whole-line or trailing) are ignored."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError as err:
        raise AvatarListError(f"ids file '{path}' does not exist") from err
    except UnicodeDecodeError as err:
        raise AvatarListError(f"ids file '{path}' is not UTF-8 text") from err
    ids: list[str] = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not _ID.fullmatch(text):
            raise AvatarListError(
                f"{path}:{number}: '{text}' is not an avatar id (one id per line: letters, digits, '.', '_', '-')"
            )
        if text not in ids:
            ids.append(text)
    if not ids:
        raise AvatarListError(f"ids file '{path}' lists no avatars (one id per line, # for comments)")
    return ids


def available_avatars(avatar_dir: str | Path | None) -> list[str]:
    """A description of what ids name: the demo ranges, then the avatar files under `avatar_dir`."""
    found = ["demo-000 ... demo-015", "demo-0016 ... demo-9999 (generated)"]
    if avatar_dir is not None and Path(avatar_dir).is_dir():
        found += sorted(p.name.removesuffix(AVATAR_SUFFIX) for p in Path(avatar_dir).glob(f"*{AVATAR_SUFFIX}"))
    return found


def resolve_avatar(avatar_id: str, avatar_dir: str | Path | None) -> str:
    """The spec `load_avatar` takes for this id: a file under `avatar_dir`, else a demo id."""
    from avatar_render.demo import demo_index, is_demo_id

    if avatar_dir is not None:
        candidate = Path(avatar_dir) / f"{avatar_id}{AVATAR_SUFFIX}"
        if candidate.exists():
            return str(candidate)
    if is_demo_id(avatar_id):
        try:
            demo_index(avatar_id)
        except KeyError as err:
            raise AvatarListError(err.args[0]) from None
        return avatar_id
    raise AvatarListError(
        f"unknown avatar id '{avatar_id}'; available: {', '.join(available_avatars(avatar_dir))}"
        + ("" if avatar_dir else " (pass --avatar-dir to add NAME.avatar.safetensors files)")
    )


@lru_cache(maxsize=8)
def cached_avatar(spec: str):
    """Load once per worker process (demo avatars take about a second to grow)."""
    from avatar_render import load_avatar

    return load_avatar(spec)
