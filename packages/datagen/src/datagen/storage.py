"""Where a dataset lives: a local folder or object storage (`s3://bucket/prefix`, `gs://bucket/prefix`).

One small interface over both, on pyarrow.fs (already a dependency): relative "/"-separated keys under the
dataset root, atomic whole-object writes, listings with sizes, uploads and downloads.

Local roots keep the historical behaviour exactly: files are written under hidden temporary names beside
their target and renamed (os.replace). On object storage an object appears whole when its upload finishes
(S3 and GCS semantics), so parts and videos are uploaded to their final keys; the consolidated manifest
and info.json still go to a new temporary key first and are then moved onto the final name.

Credentials and endpoints come from the standard environment and config files only, never from flags:
S3 reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN / ~/.aws/*, AWS_REGION or
AWS_DEFAULT_REGION, and an S3-compatible endpoint from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (e.g.
http://127.0.0.1:9000 for MinIO or moto); GCS uses Google's default credentials (GOOGLE_APPLICATION_CREDENTIALS).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["REMOTE_SCHEMES", "Storage", "StorageError", "file_digest", "is_remote", "open_storage"]

REMOTE_SCHEMES = ("s3", "gs", "gcs")
_CHUNK = 4 << 20


class StorageError(OSError):
    """Object storage could not be reached or answered an error; the message names the URI."""


def is_remote(root: str | os.PathLike[str]) -> bool:
    """True for `s3://...`, `gs://...` (and `gcs://`) roots."""
    text = os.fspath(root)
    return "://" in text and text.split("://", 1)[0].lower() in REMOTE_SCHEMES


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a local file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Storage:
    """A dataset root: `uri` is a local path or an object-storage URI. Keys are relative, "/"-separated."""

    def __init__(self, uri: str | os.PathLike[str]) -> None:
        self.uri = os.fspath(uri).rstrip("/") if is_remote(uri) else os.fspath(uri)
        self.remote = is_remote(uri)
        self._fs = None
        if self.remote:
            scheme, rest = self.uri.split("://", 1)
            self.scheme = scheme.lower()
            self.base = rest.strip("/")
            if not self.base:
                raise ValueError(f"object-storage root {uri!r} names no bucket (expected {scheme}://bucket/prefix)")
        else:
            self.scheme = "file"
            self.base = ""
            self.local_root = Path(self.uri)

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    # ---------------------------------------------------------------- remote plumbing
    @property
    def fs(self):
        """The pyarrow FileSystem of a remote root (created on first use, per process)."""
        if self._fs is None:
            self._fs = _filesystem(self.scheme, self.uri)
        return self._fs

    def _key(self, rel: str) -> str:
        return f"{self.base}/{rel.strip('/')}" if rel else self.base

    def _call(self, what: str, rel: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except FileNotFoundError:
            raise
        except OSError as err:
            raise StorageError(f"{what} {self.url(rel)} failed: {err}") from err

    def __getstate__(self) -> dict:  # pyarrow filesystems do not pickle into Ray workers everywhere: rebuild
        state = dict(self.__dict__)
        state["_fs"] = None
        return state

    # ---------------------------------------------------------------- paths
    def url(self, rel: str = "") -> str:
        """Human-readable location of key `rel` (a local path or a URI)."""
        if self.remote:
            return f"{self.scheme}://{self._key(rel)}"
        return str(self.local_root / rel) if rel else str(self.local_root)

    def local(self, rel: str) -> Path:
        """The local path of key `rel` (local roots only)."""
        assert not self.remote, "local() on a remote root"
        return self.local_root / rel

    # ---------------------------------------------------------------- queries
    def exists(self, rel: str) -> bool:
        if not self.remote:
            return self.local(rel).exists()
        from pyarrow import fs as pafs

        info = self._call("looking up", rel, lambda: self.fs.get_file_info(self._key(rel)))
        return info.type != pafs.FileType.NotFound

    def size(self, rel: str) -> int | None:
        """Size in bytes of file `rel`, None when it does not exist."""
        if not self.remote:
            path = self.local(rel)
            return path.stat().st_size if path.is_file() else None
        from pyarrow import fs as pafs

        info = self._call("looking up", rel, lambda: self.fs.get_file_info(self._key(rel)))
        return info.size if info.type == pafs.FileType.File else None

    def list_files(self, rel: str, recursive: bool = False) -> dict[str, int]:
        """{key relative to the root: size} of the files under folder `rel` (empty when it does not exist)."""
        if not self.remote:
            folder = self.local(rel)
            if not folder.is_dir():
                return {}
            paths = folder.rglob("*") if recursive else folder.iterdir()
            return {p.relative_to(self.local_root).as_posix(): p.stat().st_size for p in paths if p.is_file()}
        from pyarrow import fs as pafs

        selector = pafs.FileSelector(self._key(rel), recursive=recursive, allow_not_found=True)
        infos = self._call("listing", rel, lambda: self.fs.get_file_info(selector))
        prefix = self.base + "/"
        return {i.path[len(prefix) :]: i.size for i in infos if i.type == pafs.FileType.File}

    # ---------------------------------------------------------------- reads
    def read_bytes(self, rel: str) -> bytes:
        if not self.remote:
            return self.local(rel).read_bytes()

        def read() -> bytes:
            with self.fs.open_input_stream(self._key(rel)) as handle:
                return handle.read()

        return self._call("reading", rel, read)

    def digest(self, rel: str) -> str:
        """sha256 hex digest of file `rel` (streamed: nothing is kept in memory)."""
        if not self.remote:
            return file_digest(self.local(rel))

        def read() -> str:
            digest = hashlib.sha256()
            with self.fs.open_input_stream(self._key(rel)) as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
            return digest.hexdigest()

        return self._call("reading", rel, read)

    def download(self, rel: str, target: str | os.PathLike[str]) -> Path:
        """Copies file `rel` to the local path `target`."""
        target = Path(target)
        if not self.remote:
            shutil.copyfile(self.local(rel), target)
            return target

        def copy() -> None:
            with self.fs.open_input_stream(self._key(rel)) as src, open(target, "wb") as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)

        self._call("downloading", rel, copy)
        return target

    def read_table(self, rel: str):
        """The Parquet file `rel` as a pyarrow Table.

        Always through an Arrow-native file (a path or the filesystem), never a Python file object: with torch
        loaded, reading Parquet from Python file objects made the interpreter abort at exit now and then."""
        import pyarrow.parquet as pq

        if not self.remote:
            return pq.read_table(str(self.local(rel)))
        return self._call("reading", rel, lambda: pq.read_table(self._key(rel), filesystem=self.fs))

    # ---------------------------------------------------------------- writes
    def _temporary(self, rel: str) -> str:
        head, _, name = rel.rpartition("/")
        tmp = f".{name}.{uuid.uuid4().hex[:12]}.tmp"
        return f"{head}/{tmp}" if head else tmp

    def write_bytes(self, rel: str, data: bytes, via_temporary: bool = False) -> None:
        """Writes `data` as file `rel` so that readers see the old file or the whole new one, never a part.

        Local: a hidden temporary beside the target, then os.replace. Remote: one upload (objects appear
        whole), or with `via_temporary` a new temporary object that is then moved onto the final name."""
        if not self.remote:
            path = self.local(rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.local(self._temporary(rel))
            try:
                tmp.write_bytes(data)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            return
        target = self._temporary(rel) if via_temporary else rel

        def put() -> None:
            with self.fs.open_output_stream(self._key(target)) as handle:
                handle.write(data)

        self._call("writing", target, put)
        if via_temporary:
            self._call("renaming", target, lambda: self.fs.move(self._key(target), self._key(rel)))

    def write_table(self, rel: str, table, via_temporary: bool = False) -> None:
        """Writes a pyarrow Table as Parquet file `rel`, whole or not at all (see write_bytes)."""
        import pyarrow.parquet as pq

        if not self.remote:
            path = self.local(rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.local(self._temporary(rel))
            try:
                pq.write_table(table, str(tmp))
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            return
        target = self._temporary(rel) if via_temporary else rel
        self._call("writing", target, lambda: pq.write_table(table, self._key(target), filesystem=self.fs))
        if via_temporary:
            self._call("renaming", target, lambda: self.fs.move(self._key(target), self._key(rel)))

    def upload(self, source: str | os.PathLike[str], rel: str) -> None:
        """Copies the local file `source` to key `rel` (local roots: an atomic copy-then-rename)."""
        if not self.remote:
            path = self.local(rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            if Path(source).resolve() == path.resolve():
                return
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
            try:
                shutil.copyfile(source, tmp)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            return

        def put() -> None:
            with open(source, "rb") as src, self.fs.open_output_stream(self._key(rel)) as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)

        self._call("uploading to", rel, put)

    def delete(self, rel: str) -> None:
        """Removes file `rel` if it exists."""
        if not self.remote:
            self.local(rel).unlink(missing_ok=True)
            return
        try:
            self.fs.delete_file(self._key(rel))
        except FileNotFoundError:
            pass
        except OSError as err:
            if "not found" not in str(err).lower() and "does not exist" not in str(err).lower():
                raise StorageError(f"deleting {self.url(rel)} failed: {err}") from err

    def check_writable(self) -> None:
        """Writes and removes a probe; PermissionError naming the root when that fails. Local roots are created."""
        probe = f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if not self.remote:
            try:
                self.local_root.mkdir(parents=True, exist_ok=True)
                (self.local_root / probe).write_bytes(b"")
                (self.local_root / probe).unlink()
            except OSError as err:
                raise PermissionError(
                    f"output folder '{self.local_root}' is not writable ({err.strerror or err})"
                ) from err
            return
        try:
            self.write_bytes(probe, b"")
            self.delete(probe)
        except OSError as err:
            raise PermissionError(f"output {self.uri} is not writable: {err}") from err


def _filesystem(scheme: str, uri: str):
    from pyarrow import fs as pafs

    try:
        if scheme == "s3":
            endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            kwargs: dict[str, Any] = {}
            if endpoint:
                kwargs["endpoint_override"] = endpoint
                if endpoint.startswith("http://"):
                    kwargs["scheme"] = "http"
            if region:
                kwargs["region"] = region
            if endpoint or region:
                return pafs.S3FileSystem(**kwargs)
            filesystem, _ = pafs.FileSystem.from_uri(uri)  # resolves the bucket's region
            return filesystem
        filesystem, _ = pafs.FileSystem.from_uri(uri.replace("gcs://", "gs://", 1))
        return filesystem
    except (OSError, ValueError) as err:
        raise StorageError(f"cannot open {uri}: {err}") from err


def open_storage(root: str | os.PathLike[str] | Storage) -> Storage:
    """`root` as a Storage (a Storage passes through)."""
    return root if isinstance(root, Storage) else Storage(root)
