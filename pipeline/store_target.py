"""What lies at a store path, whether curation may write there, and the lock that keeps one run per archive.

Curation never removes or overwrites anything it did not create from the same manifest. Before it
writes, :func:`target_state` classifies the store path (a local path or an fsspec URL):

* ``absent``: nothing there; the archive is created.
* ``empty``: an empty folder; the archive is created inside it.
* ``archive``: a complete softcon archive (its template finished); resumed when its manifest hash
  matches, refused otherwise.
* ``incomplete``: a softcon archive whose template write was interrupted (``template_complete`` is
  false). It holds no patch data yet; when its manifest hash matches it is rewritten, otherwise refused.
* ``foreign``: anything else (a file, a folder with other content, somebody else's Zarr store): refused.

Files written beside the archive (``<store>.locations.parquet``, ``<store>.report/``) follow the same
rule: :func:`is_our_locations_file` tells a locations table of ours from any other file.

:func:`archive_lock` holds an exclusive ``flock`` on ``<store>.lock`` for the duration of a curation,
so a second run on the same local store is told and refused instead of duplicating the work. The
operating system drops the lock when the process dies, even on ``kill -9``, so it never outlives its
holder. Remote (fsspec URL) stores have no such lock: the run logs that it is unguarded.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import fsspec

from pipeline.errors import BadInput, RunFailed

log = logging.getLogger(__name__)

SOFTWARE = "softcon-ssl4eo"
TEMPLATE_MARKER = "template_complete"
LOCATION_COLUMNS = {"index", "lon", "lat", "epsg", "x", "y", "city", "source_id"}


class ArchiveError(BadInput):
    """The archive at a path cannot be used (not an archive, another manifest's, bad layout, …)."""


class StoreRefused(ArchiveError):
    """The store path holds something curation must not write into."""


class ArchiveBusy(RunFailed):
    """Another curation holds the archive's lock."""


def is_url(path: str) -> bool:
    """A URL with a scheme (``s3://``, ``gs://``, ``file://``, …) rather than a plain path.

    The project's one rule for telling paths from URLs, with :func:`is_local`.
    """
    return "://" in path


def is_local(path: str) -> bool:
    """A path on this machine's file system (plain path or ``file://`` URL)."""
    return not is_url(path) or path.startswith("file://")


def local_path(path: str) -> Path:
    return Path(path.removeprefix("file://"))


def _filesystem(path: str, storage_options: dict | None):
    return fsspec.core.url_to_fs(path, **(storage_options or {}))


def _root_attributes(fs, root: str) -> dict | None:
    """The attributes in the root ``zarr.json`` of a Zarr v3 group, or None when there is none."""
    try:
        meta = json.loads(fs.cat_file(f"{root.rstrip('/')}/zarr.json"))
    except (FileNotFoundError, OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("node_type") != "group":
        return None
    attrs = meta.get("attributes")
    return attrs if isinstance(attrs, dict) else None


def target_state(path: str, storage_options: dict | None = None) -> tuple[str, dict]:
    """Classify a store path as ``absent | empty | archive | incomplete | foreign`` (see module doc).

    Also returns the archive's root attributes (empty unless the state is ``archive`` or ``incomplete``).
    """
    fs, root = _filesystem(path, storage_options)
    if not fs.exists(root):
        return "absent", {}
    if not fs.isdir(root):
        return "foreign", {}
    if not fs.ls(root, detail=False):
        return "empty", {}
    attrs = _root_attributes(fs, root)
    if attrs is None or attrs.get("software") != SOFTWARE or "manifest_hash" not in attrs:
        return "foreign", {}
    complete = attrs.get(TEMPLATE_MARKER)
    if complete is None:  # archives written before the marker existed: complete once `status` is there
        complete = fs.exists(f"{root.rstrip('/')}/status/zarr.json")
    return ("archive" if complete else "incomplete"), attrs


def check_target(path: str, storage_options: dict | None, manifest_hash: str) -> str:
    """Raise :class:`StoreRefused` unless curation of ``manifest_hash`` may write at ``path``; return the state."""
    state, attrs = target_state(path, storage_options)
    if state == "foreign":
        raise StoreRefused(
            f"store.path: {path} already exists and is not an empty folder nor a softcon archive of this "
            "manifest; refusing to write there (nothing was changed): choose a new store.path")
    if state in ("archive", "incomplete") and attrs["manifest_hash"] != manifest_hash:
        raise StoreRefused(
            f"store.path: {path} holds an archive created from a different manifest "
            f"(hash {attrs['manifest_hash'][:12]}…, this one {manifest_hash[:12]}…); "
            "point store.path at a new location or delete the old archive")
    return state


def remove_incomplete(path: str, storage_options: dict | None, manifest_hash: str) -> None:
    """Delete an archive whose template write was interrupted; only ever one of this manifest's."""
    state, attrs = target_state(path, storage_options)
    if state != "incomplete" or attrs.get("manifest_hash") != manifest_hash:
        raise AssertionError(f"{path}: refusing to remove a store in state {state!r}")
    fs, root = _filesystem(path, storage_options)
    log.warning("%s: the template write of an earlier run was interrupted; writing it again", path)
    fs.rm(root, recursive=True)


def is_our_locations_file(path: Path) -> bool:
    """True when ``path`` is a GeoParquet locations table written by this project."""
    import pyarrow.parquet as pq

    try:
        names = set(pq.read_schema(path).names)
    except Exception:  # noqa: BLE001 - not a Parquet file at all
        return False
    return LOCATION_COLUMNS <= names


def check_beside(path: str) -> None:
    """Refuse when a file that curation writes beside a local archive exists and is not ours."""
    if not is_local(path):
        return
    loc = local_path(path.rstrip("/") + ".locations.parquet")
    if loc.exists() and not (loc.is_file() and is_our_locations_file(loc)):
        raise StoreRefused(f"{loc} exists and is not a locations table of this project; refusing to "
                           "overwrite it: move it or choose a new store.path")


@contextlib.contextmanager
def archive_lock(path: str) -> Iterator[None]:
    """Hold ``<store>.lock`` exclusively while curating; refuse with :class:`ArchiveBusy` when held."""
    if not is_local(path):
        log.info("%s: remote store; concurrent curation runs on it are not guarded by a lock", path)
        yield
        return
    import fcntl

    lock_file = local_path(path.rstrip("/") + ".lock")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)  # never truncates an existing file
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise ArchiveBusy(f"{path}: another curation run is writing this archive (it holds {lock_file}); "
                              "wait for it to finish or stop it, then run again") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock
