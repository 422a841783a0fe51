"""A local working copy kept in step with an ``s3://`` prefix: pull what changed, push atomically.

:class:`ObjectStore` moves whole objects between local files and ``<remote>/<relative path>``;
:class:`Mirror` decides what to move for a list of *specs*, each a path relative to the home:
a file (``data/quality/recipe=r/summary.json``) or, ending in ``/``, every file below a folder
(``data/dedup/recipe=r/``).

- **Unchanged files are not moved.** Every synchronized file has a record in ``state`` (beside
  the working copy): the object's ETag and the file's size, mtime and inode when it was pulled
  or pushed. A file whose stat still matches its record is known to hold that ETag without
  reading it; otherwise its ETag is computed locally (:func:`local_etag`: the MD5 of a
  single-part upload, the MD5 of the parts' MD5s for a multipart one, as S3 computes it) and
  compared with the object's. This is how ``aws s3 sync`` and rsync avoid work, with a content
  check instead of their size-and-time guess.
- **An object appears only complete.** Files below :data:`PART_SIZE` go up in one ``PUT`` with
  their ``Content-MD5`` (S3 stores nothing unless the whole body arrives and matches); larger
  ones as a multipart upload that is aborted on any error, and that a killed process leaves
  incomplete, which S3 never shows under the key (a bucket lifecycle rule,
  ``AbortIncompleteMultipartUpload``, reclaims the orphaned parts). Downloads land in a
  temporary file beside the target, renamed into place (:func:`corpuslab.fileio.atomic_path`),
  and are conditional on the listed ETag (``If-Match``), so a record never names other bytes.
- **Deletions propagate, but only of files this copy knew.** A pull removes a local file whose
  object is gone (when the file is as it was synchronized); a push deletes an object whose
  file this copy synchronized and then removed (when the object is still the one it knew).
  Objects another machine wrote are never deleted, and local files no stage has pushed yet
  are never touched by a pull.
- Names starting with ``.`` (temporary files of atomic writes, locks) are never synchronized.

A pull keeps a local file that changed since it was synchronized when the object did not
change meanwhile: that is a step's unpushed output (a concurrent step, or one that failed), as
it would be in a local home. Pulls and pushes of one working copy hold a file lock, so the
processes of one machine (Dagster steps, a training rank pushing checkpoints) never interleave.

boto3 rather than pyarrow's S3 filesystem (which the readers use): listings carry ETags, and
multipart uploads are aborted explicitly on failure (pyarrow's output stream completes the
upload when it is closed after an error).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from corpuslab.fileio import atomic_path
from corpuslab.ingest.storage import ENDPOINT_ENVS, REGION_ENVS, S3Options, StorageError
from corpuslab.layout import S3_SCHEME, Layout, normalize_remote

log = logging.getLogger(__name__)

PART_SIZE = 16 << 20  # multipart threshold and part size (S3's minimum part is 5 MiB)
MAX_CONCURRENCY = 4  # parts in flight per multipart transfer
LOCK = ".lock"


@dataclass(frozen=True)
class Remote:
    """An object as a listing shows it."""

    etag: str
    size: int


def local_etag(path: Path, part_size: int = PART_SIZE) -> str:
    """The ETag S3 gives this file's bytes uploaded by :meth:`ObjectStore.put`.

    Below ``part_size`` one ``PUT``: the MD5. From ``part_size`` on, a multipart upload in parts
    of ``part_size`` (doubled while more than 10,000 parts, as s3transfer does): the MD5 of the
    concatenated part MD5s, then ``-<parts>``. Objects encrypted with SSE-KMS carry other ETags;
    for them every comparison fails and files are moved again (correct, only slower).
    """
    from s3transfer.utils import ChunksizeAdjuster

    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size < part_size:
            h = hashlib.md5()
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
            return h.hexdigest()
        chunk_size = ChunksizeAdjuster().adjust_chunksize(part_size, size)
        parts = []
        while block := fh.read(chunk_size):
            parts.append(hashlib.md5(block).digest())
    return f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"


def _etag(value: str) -> str:
    return value.strip('"')


def _hidden(rel: str) -> bool:
    return any(part.startswith(".") for part in PurePosixPath(rel).parts)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ino) == (b.st_size, b.st_mtime_ns, b.st_ino)


def check_spec(spec: str) -> str:
    """A spec as given, after checking it is relative, without ``.``/``..`` segments."""
    parts = spec.rstrip("/").split("/")
    if not spec or spec.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{spec!r} is not a path relative to the home")
    return spec


class ObjectStore:
    """Whole-object transfers between local files and ``<remote>/<relative path>``."""

    def __init__(
        self, remote: str, options: S3Options | None = None, part_size: int = PART_SIZE
    ) -> None:
        self.remote = normalize_remote(remote)
        self.bucket, _, self.prefix = self.remote[len(S3_SCHEME) :].partition("/")
        self.options = options or S3Options()
        self.part_size = part_size
        self.client = self._client()

    def _client(self) -> Any:
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        o = self.options
        endpoint = o.endpoint_url or next((os.environ[n] for n in ENDPOINT_ENVS
                                           if os.environ.get(n)), None)  # fmt: skip
        region = o.region or next((os.environ[n] for n in REGION_ENVS if os.environ.get(n)), None)
        config = Config(
            retries={"max_attempts": o.max_attempts, "mode": "standard"},
            signature_version=UNSIGNED if o.anonymous else None,
            # an S3-compatible server (MinIO, moto) on a host name or IP: path-style addressing
            s3={"addressing_style": "path"} if endpoint else None,
        )
        if (o.access_key_id is None) != (o.secret_access_key is None):
            raise StorageError("S3 credentials need both access_key_id and secret_access_key")
        return boto3.Session().client(  # a session of its own: clients of threads
            "s3",
            endpoint_url=endpoint,
            region_name=region or "us-east-1",
            aws_access_key_id=o.access_key_id,
            aws_secret_access_key=o.secret_access_key,
            aws_session_token=o.session_token,
            config=config,
        )

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def url(self, rel: str) -> str:
        return f"{self.remote}/{rel}"

    def _error(self, what: str, rel: str, exc: Exception) -> StorageError:
        return StorageError(f"{what} {self.url(rel)} failed: {exc}")

    def list(self, spec: str) -> dict[str, Remote]:
        """Objects of a spec (a file, or every object below a folder ending in ``/``)."""
        if not spec.endswith("/"):
            found = self.head(spec)
            return {spec: found} if found is not None else {}
        out: dict[str, Remote] = {}
        base = len(self.key(""))
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.key(spec)
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    rel = obj["Key"][base:]
                    if not rel.endswith("/"):  # folder markers some consoles create
                        out[rel] = Remote(_etag(obj["ETag"]), int(obj["Size"]))
        except Exception as exc:
            raise self._error("listing", spec, exc) from exc
        return out

    def head(self, rel: str) -> Remote | None:
        from botocore.exceptions import ClientError

        try:
            got = self.client.head_object(Bucket=self.bucket, Key=self.key(rel))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error("looking up", rel, exc) from exc
        return Remote(_etag(got["ETag"]), int(got["ContentLength"]))

    def get(self, rel: str, dest: Path, etag: str) -> None:
        """Download the object, only while its ETag is ``etag``, into ``dest`` atomically.

        The bytes are checked against the ETag (its MD5, for a single-part object) or, for a
        multipart one, against the announced length.
        """
        try:
            got = self.client.get_object(Bucket=self.bucket, Key=self.key(rel), IfMatch=etag)
            md5, size = hashlib.md5(), 0
            with atomic_path(dest) as tmp, open(tmp, "wb") as fh:
                for chunk in got["Body"].iter_chunks(1 << 20):
                    fh.write(chunk)
                    md5.update(chunk)
                    size += len(chunk)
                if size != int(got["ContentLength"]) or (
                    "-" not in etag and md5.hexdigest() != etag
                ):
                    raise StorageError(f"{size} bytes arrived, not the object's")
        except Exception as exc:
            raise self._error("fetching", rel, exc) from exc

    def put(self, src: Path, rel: str) -> str:
        """Upload ``src`` so that the object appears only complete; returns its ETag."""
        size = src.stat().st_size
        try:
            if size < self.part_size:
                body = src.read_bytes()
                md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
                got = self.client.put_object(
                    Bucket=self.bucket, Key=self.key(rel), Body=body, ContentMD5=md5
                )
                return _etag(got["ETag"])
            from boto3.s3.transfer import TransferConfig

            config = TransferConfig(
                multipart_threshold=self.part_size,
                multipart_chunksize=self.part_size,
                max_concurrency=MAX_CONCURRENCY,
            )
            # s3transfer aborts the multipart upload on any error; a killed process leaves it
            # incomplete, which S3 never shows under the key
            self.client.upload_file(str(src), self.bucket, self.key(rel), Config=config)
        except Exception as exc:
            raise self._error("uploading", rel, exc) from exc
        done = self.head(rel)
        if done is None:
            raise StorageError(f"{self.url(rel)} is missing right after its upload")
        return done.etag

    def put_bytes(self, data: bytes, rel: str) -> str:
        """Upload a small object in one request; returns its ETag."""
        md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
        try:
            got = self.client.put_object(
                Bucket=self.bucket, Key=self.key(rel), Body=data, ContentMD5=md5
            )
        except Exception as exc:
            raise self._error("uploading", rel, exc) from exc
        return _etag(got["ETag"])

    def delete(self, rel: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key(rel))
        except Exception as exc:
            raise self._error("deleting", rel, exc) from exc


@dataclass(frozen=True)
class Record:
    """What a file held when it was last synchronized: the object's ETag and the file's stat."""

    etag: str
    size: int
    mtime_ns: int
    ino: int

    def matches(self, st: os.stat_result) -> bool:
        return (self.size, self.mtime_ns, self.ino) == (st.st_size, st.st_mtime_ns, st.st_ino)


class SyncState:
    """One JSON record per synchronized file, at ``<state>/<relative path>.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, rel: str) -> Path:
        return self.root / f"{rel}.json"

    def get(self, rel: str) -> Record | None:
        try:
            return Record(**json.loads(self._path(rel).read_text()))
        except (OSError, ValueError, TypeError):
            return None  # no record (or an unreadable one): the file is compared by content

    def set(self, rel: str, etag: str, st: os.stat_result) -> None:
        record = Record(etag, st.st_size, st.st_mtime_ns, st.st_ino)
        with atomic_path(self._path(rel)) as tmp:
            tmp.write_text(json.dumps(vars(record)))

    def drop(self, rel: str) -> None:
        self._path(rel).unlink(missing_ok=True)

    def under(self, spec: str) -> list[str]:
        """Relative paths with a record, inside ``spec``."""
        if not spec.endswith("/"):
            return [spec] if self._path(spec).is_file() else []
        folder = self.root / spec
        if not folder.is_dir():
            return []
        out = []
        for path in folder.rglob("*.json"):
            rel = path.relative_to(self.root).as_posix()[: -len(".json")]
            if not _hidden(rel):
                out.append(rel)
        return sorted(out)


@dataclass
class Transfer:
    """What one pull or push did."""

    moved: list[str] = field(default_factory=list)  # fetched or uploaded
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def describe(self, verb: str) -> str:
        return (
            f"{verb} {len(self.moved)} file(s) ({self.bytes:,} bytes), "
            f"{self.unchanged} unchanged, {len(self.deleted)} deleted, in {self.seconds:.2f}s"
        )


class Mirror:
    """A working copy ``root`` of ``store``, with its records in ``state``."""

    def __init__(self, root: Path, store: ObjectStore, state: Path) -> None:
        self.root = root
        self.store = store
        self.state = SyncState(state)

    @classmethod
    def for_layout(cls, layout: Layout, options: S3Options | None = None) -> Mirror:
        """The mirror of a remote home's working copy; records in the ``sync`` folder beside it."""
        if layout.remote is None:
            raise ValueError(f"{layout.home} is a local home: there is nothing to synchronize")
        return cls(layout.home, ObjectStore(layout.remote, options), layout.home.parent / "sync")

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state.root.mkdir(parents=True, exist_ok=True)
        with open(self.state.root / LOCK, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _known_etag(self, rel: str, path: Path, st: os.stat_result) -> str:
        """The file's ETag: from its record while its stat matches, else computed."""
        record = self.state.get(rel)
        if record is not None and record.matches(st):
            return record.etag
        return local_etag(path, self.store.part_size)

    def pull(self, specs: Iterable[str]) -> Transfer:
        """Make the specs' files what the store holds, fetching only objects that differ."""
        done, t0 = Transfer(), time.perf_counter()
        with self._locked():
            for spec in map(check_spec, specs):
                objects = {r: o for r, o in self.store.list(spec).items() if not _hidden(r)}
                for rel, obj in sorted(objects.items()):
                    path = self.root / rel
                    record = self.state.get(rel)
                    if path.is_file():
                        st = path.stat()
                        # unchanged remotely since this copy synchronized it: keep the file
                        # (as it is, even if a step changed it locally and has not pushed yet)
                        if record is not None and record.etag == obj.etag:
                            done.unchanged += 1
                            continue
                        if local_etag(path, self.store.part_size) == obj.etag:
                            self.state.set(rel, obj.etag, st)
                            done.unchanged += 1
                            continue
                    self.store.get(rel, path, obj.etag)
                    self.state.set(rel, obj.etag, path.stat())
                    done.moved.append(rel)
                    done.bytes += obj.size
                for rel in self.state.under(spec):
                    if rel in objects:
                        continue
                    path, record = self.root / rel, self.state.get(rel)
                    # deleted from the store: delete the local file too, unless it changed here
                    if path.is_file() and record is not None and record.matches(path.stat()):
                        path.unlink()
                        done.deleted.append(rel)
                    self.state.drop(rel)
        done.seconds = time.perf_counter() - t0
        return done

    def _local_files(self, spec: str) -> list[str]:
        path = self.root / spec
        if not spec.endswith("/"):
            return [spec] if path.is_file() and not _hidden(spec) else []
        if not path.is_dir():
            return []
        out = []
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if not name.startswith("."):
                    out.append((Path(dirpath) / name).relative_to(self.root).as_posix())
        return sorted(out)

    def push(self, specs: Sequence[str], last: Sequence[str] = ()) -> Transfer:
        """Make the store hold the specs' local files, uploading only what differs.

        Files in ``last`` go up after every other file (commit markers such as a checkpoint's
        ``latest``, so a reader never sees a marker before what it names); objects whose files
        this copy synchronized and then removed are deleted after that.
        """
        done, t0 = Transfer(), time.perf_counter()
        specs = [check_spec(s) for s in specs]
        with self._locked():
            objects: dict[str, Remote] = {}
            files: list[str] = []
            for spec in specs:
                objects |= self.store.list(spec)
                files += self._local_files(spec)
            tail = set(last)
            files = sorted(set(files), key=lambda r: (r in tail, r))
            for rel in files:
                path = self.root / rel
                try:
                    st = path.stat()
                    etag = self._known_etag(rel, path, st)
                except FileNotFoundError:
                    continue  # removed meanwhile (a checkpoint rotated out): deleted below
                if rel in objects and objects[rel].etag == etag:
                    self.state.set(rel, etag, st)
                    done.unchanged += 1
                    continue
                try:
                    new = self.store.put(path, rel)
                except StorageError:
                    if not path.exists():
                        continue
                    raise
                done.moved.append(rel)
                done.bytes += st.st_size
                if _same(path.stat(), st):  # a file that changed while going up goes again later
                    self.state.set(rel, new, st)
                else:
                    self.state.drop(rel)
            present = set(files)
            for spec in specs:
                for rel in self.state.under(spec):
                    record = self.state.get(rel)
                    if rel in present or (self.root / rel).exists() or record is None:
                        continue
                    current = objects.get(rel)
                    if current is not None and current.etag == record.etag:
                        self.store.delete(rel)
                        done.deleted.append(rel)
                    self.state.drop(rel)  # another machine's newer object is left alone
        done.seconds = time.perf_counter() - t0
        return done
