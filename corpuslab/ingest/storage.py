"""One filesystem interface for local folders and ``s3://`` prefixes.

Readers and writers go through :mod:`pyarrow.fs` (already a dependency: its S3 client ships in
the pyarrow wheel), so a laptop folder and an object-storage prefix take the same code path.
Paths inside a filesystem are pyarrow's: an absolute POSIX path locally, ``bucket/key`` on S3.

S3 settings come from keyword options (see :class:`S3Options`) or the standard AWS variables:
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (MinIO, moto, any S3-compatible server),
``AWS_REGION`` / ``AWS_DEFAULT_REGION``, and the AWS SDK's own credential chain
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``~/.aws``, instance roles).
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import pyarrow.fs as pafs

S3_SCHEME = "s3://"
ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
REGION_ENVS = ("AWS_REGION", "AWS_DEFAULT_REGION")
# one ranged GET per refill on S3: large enough that a shard is a handful of requests
DEFAULT_BUFFER_SIZE = 4 << 20

Location = Path | str  # a local path, or a URL such as "s3://bucket/prefix/file.jsonl.gz"
_SECRET_FIELDS = frozenset({"secret_access_key", "session_token"})


class StorageError(ValueError):
    """A location that cannot be opened (unknown scheme, missing bucket, bad options)."""


@dataclass(frozen=True)
class S3Options:
    """How to reach S3 or an S3-compatible server; unset fields fall back to the AWS env vars."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    anonymous: bool = False
    max_attempts: int = 3

    def __post_init__(self) -> None:
        """Strict types: ``anonymous: 'false'`` would otherwise be truthy and sign nothing."""
        for name in ("endpoint_url", "region", "access_key_id", "secret_access_key"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise StorageError(f"storage option {name} must be a string, not {value!r}")
        if self.session_token is not None and not isinstance(self.session_token, str):
            raise StorageError("storage option session_token must be a string")
        if not isinstance(self.anonymous, bool):
            raise StorageError(
                f"storage option anonymous must be true or false, not {self.anonymous!r}"
            )
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise StorageError(
                f"storage option max_attempts must be an integer, not {self.max_attempts!r}"
            )
        if self.max_attempts < 1:
            raise StorageError(f"storage option max_attempts must be >= 1, not {self.max_attempts}")

    def __repr__(self) -> str:
        """Every field, with the secret key and session token masked (reprs end up in logs)."""
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS and value is not None:
                value = "***"
            shown.append(f"{f.name}={value!r}")
        return f"S3Options({', '.join(shown)})"

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> S3Options:
        """Options from keyword arguments, naming the allowed keys when one is unknown."""
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - allowed)
        if unknown:
            names = ", ".join(sorted(allowed))
            raise StorageError(f"unknown storage option(s) {', '.join(unknown)}; allowed: {names}")
        return cls(**options)

    def filesystem(self, bucket: str | None = None) -> pafs.S3FileSystem:
        """A pyarrow S3 filesystem for these options (env vars fill what is unset).

        Without a region or endpoint, AWS is asked where ``bucket`` lives, as ``from_uri`` does.
        """
        endpoint = self.endpoint_url or _first_env(ENDPOINT_ENVS)
        region = self.region or _first_env(REGION_ENVS)
        if region is None and endpoint is None and bucket:
            with contextlib.suppress(OSError):
                region = pafs.resolve_s3_region(bucket)
        region = region or "us-east-1"
        kwargs: dict[str, Any] = {
            "region": region,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=self.max_attempts),
        }
        if endpoint:
            kwargs["endpoint_override"] = endpoint
            if endpoint.startswith("http://"):
                kwargs["scheme"] = "http"
        if self.anonymous:
            kwargs["anonymous"] = True
        elif self.access_key_id or self.secret_access_key:
            if not (self.access_key_id and self.secret_access_key):
                raise StorageError("S3 credentials need both access_key_id and secret_access_key")
            kwargs.update(
                access_key=self.access_key_id,
                secret_key=self.secret_access_key,
                session_token=self.session_token,
            )
        return pafs.S3FileSystem(**kwargs)


def _first_env(names: tuple[str, ...]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def is_url(location: Location) -> bool:
    """Whether ``location`` names object storage (``s3://``) rather than a local path."""
    return isinstance(location, str) and location.startswith(S3_SCHEME)


def _split_url(url: str) -> str:
    if "://" in url and not url.startswith(S3_SCHEME):
        raise StorageError(f"{url!r}: unsupported scheme; use a local path or s3://bucket/prefix")
    path = url[len(S3_SCHEME) :].strip("/") if url.startswith(S3_SCHEME) else url
    if url.startswith(S3_SCHEME) and not path:
        raise StorageError(f"{url!r} names no bucket")
    return path


def open_fs(url_or_path: Location, **options: Any) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding ``url_or_path`` and the path inside it.

    ``options`` are :class:`S3Options` fields; they are ignored for local paths.
    """
    if isinstance(url_or_path, str) and "://" in url_or_path:
        if url_or_path.startswith("file://"):
            return pafs.LocalFileSystem(), _local(url_or_path[len("file://") :])
        path = _split_url(url_or_path)
        return S3Options.from_kwargs(options).filesystem(path.split("/")[0]), path
    return pafs.LocalFileSystem(), _local(url_or_path)


def _local(path: str | os.PathLike[str]) -> str:
    return Path(path).expanduser().absolute().as_posix()


def resolve(
    location: Location, fs: pafs.FileSystem | None = None, **options: Any
) -> tuple[pafs.FileSystem, str]:
    """Like :func:`open_fs`, but reuse ``fs`` (already configured) when one is given."""
    if fs is None:
        return open_fs(location, **options)
    if isinstance(location, str) and location.startswith(S3_SCHEME):
        return fs, _split_url(location)
    if isinstance(fs, pafs.LocalFileSystem):
        return fs, _local(location)
    return fs, str(location).strip("/")


def to_location(fs: pafs.FileSystem, path: str) -> Location:
    """The user-facing name of ``path``: a ``Path`` locally, an ``s3://`` URL on S3."""
    if isinstance(fs, pafs.LocalFileSystem):
        return Path(path)
    if fs.type_name == "s3":
        return S3_SCHEME + path
    return f"{fs.type_name}://{path}"


def join(path: str, *parts: str) -> str:
    """Join path parts with ``/`` (pyarrow paths are POSIX on every filesystem)."""
    return str(PurePosixPath(path, *parts))


def relative(path: str, root: str) -> PurePosixPath:
    """``path`` relative to ``root`` (both inside the same filesystem)."""
    return PurePosixPath(path).relative_to(PurePosixPath(root))


def path_type(fs: pafs.FileSystem, path: str) -> str | None:
    """``"file"``, ``"dir"`` or ``None`` when nothing is there."""
    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise StorageError(f"cannot reach {to_location(fs, path)}: {exc}") from exc
    if info.type == pafs.FileType.File:
        return "file"
    if info.type == pafs.FileType.Directory:
        return "dir"
    return None


def file_size(fs: pafs.FileSystem, path: str) -> int:
    """Size in bytes of a file."""
    return int(fs.get_file_info(path).size or 0)


def list_files(
    fs: pafs.FileSystem,
    root: str,
    suffixes: tuple[str, ...] | None = None,
    recursive: bool = True,
    skipped: list[str] | None = None,
) -> list[str]:
    """Files under ``root`` (sorted paths) ending with one of ``suffixes``.

    Names starting with ``.`` (temporary files of atomic writes, ``.git``) are skipped at any
    depth, so a half-written file is never listed. A local name that is not valid UTF-8 cannot
    be a pyarrow path: it is left out (with everything below it) and, when ``skipped`` is
    given, appended to it with its undecodable bytes escaped, so one odd name never makes a
    whole source unlistable.
    """
    if isinstance(fs, pafs.LocalFileSystem):
        return _list_local(root, suffixes, recursive, skipped)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=recursive))
    except FileNotFoundError as exc:
        raise StorageError(f"{to_location(fs, root)} does not exist") from exc
    except OSError as exc:
        raise StorageError(f"cannot list {to_location(fs, root)}: {exc}") from exc
    out = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        if any(part.startswith(".") for part in relative(info.path, root).parts):
            continue
        if suffixes is None or info.path.endswith(suffixes):
            out.append(info.path)
    return sorted(out)


def printable_path(path: str | bytes) -> str:
    """A file name as text whatever its bytes: undecodable bytes shown as ``\\xNN`` escapes."""
    raw = os.fsencode(path)
    return raw.decode("utf-8", "backslashreplace")


def _list_local(
    root: str, suffixes: tuple[str, ...] | None, recursive: bool, skipped: list[str] | None
) -> list[str]:
    """:func:`list_files` on a local folder with ``os.scandir`` (pyarrow fails on a bad name)."""
    if not os.path.isdir(root):
        if os.path.exists(root):
            raise StorageError(f"cannot list {root}: not a directory")
        raise StorageError(f"{root} does not exist")
    out: list[str] = []
    seen: set[tuple[int, int]] = set()

    def walk(folder: str) -> None:
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            if folder == root:
                raise StorageError(f"cannot list {root}: {exc}") from exc
            if skipped is not None:
                skipped.append(f"{printable_path(folder)} (cannot list: {exc.strerror})")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                entry.name.encode("utf-8")
            except UnicodeEncodeError:
                if skipped is not None:
                    skipped.append(f"{printable_path(entry.path)} (name is not valid UTF-8)")
                continue
            try:
                is_dir = entry.is_dir()
                is_file = not is_dir and entry.is_file()
            except OSError:
                continue
            if is_dir and recursive:
                walk(entry.path)
            elif is_file and (suffixes is None or entry.name.endswith(suffixes)):
                out.append(entry.path)

    walk(root)
    return sorted(out)


class _RawStream(io.RawIOBase):
    """A pyarrow input stream as a Python raw stream that knows its position.

    Python's ``BufferedReader`` on top gives ``readline``/``tell``, which gzip, zstandard and
    FastWARC need and a non-seekable pyarrow stream does not provide.
    """

    def __init__(self, native: Any, name: str) -> None:
        self._native = native
        self._name = name
        self._pos = 0
        self.failure: StorageError | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._native.read(len(buffer))
        except OSError as exc:
            # not an OSError, so that readers do not mistake a storage failure for bad data
            self.failure = StorageError(f"reading {self._name} failed: {exc}")
            raise self.failure from exc
        n = len(data)
        memoryview(buffer).cast("B")[:n] = data
        self._pos += n
        return n

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._native.close()
        super().close()


def open_input(fs: pafs.FileSystem, path: str, buffer_size: int = DEFAULT_BUFFER_SIZE) -> BinaryIO:
    """A buffered binary stream over the file's raw bytes (no decompression)."""
    name = str(to_location(fs, path))
    try:
        native = fs.open_input_stream(path, compression=None)
    except FileNotFoundError as exc:
        raise StorageError(f"{name} does not exist") from exc
    except OSError as exc:
        raise StorageError(f"cannot open {name}: {exc}") from exc
    return io.BufferedReader(_RawStream(native, name), buffer_size=buffer_size)


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """The whole content of a (small) file."""
    try:
        with fs.open_input_stream(path, compression=None) as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise StorageError(f"{to_location(fs, path)} does not exist") from exc
    except OSError as exc:
        raise StorageError(f"reading {to_location(fs, path)} failed: {exc}") from exc


def read_failure(stream: BinaryIO) -> StorageError | None:
    """The storage error a stream from :func:`open_input` hit, even if a reader swallowed it.

    Parsers written in other languages (FastWARC) turn Python exceptions into their own errors;
    this tells a failing disk or network apart from a corrupt file.
    """
    raw = getattr(stream, "raw", None)
    return getattr(raw, "failure", None)
