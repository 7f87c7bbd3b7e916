"""Import the published SSL4EO-S12-ML multi-labels into an archive's ``multi_hot``.

The released labels (SSL4EO-S12-ML, announced in the README of github.com/zhu-xlab/softcon) are one JSON object::

    {"<7-digit location id>": {"<S2 L1C system:index>": ["0", "4", ...], ...}, ...}

Class ids are Dynamic World ``label`` indices written as strings (``"0"`` water … ``"8"`` snow_and_ice,
the archive's ``class`` order). An **empty list** means the authors published no label for that image.

Matching. An entry is matched to the archive by the ``patch_id`` coordinate (the location id) and the
``image_id`` variable at the ``s2_l1c`` modality (the L1C ``system:index`` of each season), over every
season of the *done* patches. Patches that are todo or failed are never matched (their entries count
as missing).

What is written. For every matched patch-season, ``multi_hot[patch, season, :]`` is replaced by the
published vector: 1 for each listed class, 0 otherwise. A matched entry with an empty list therefore
sets the vector to all zero, which the archive reads as "unlabelled" (it is counted as
``matched_unlabelled``). Patch-seasons without a JSON entry keep their computed vector.
``label_fraction`` is left as computed from the Dynamic World maps: the published file holds presence
only, no fractions, so after an import the two may disagree for matched patch-seasons (a published
class may have a computed fraction of 0 and the other way round). ``label_method`` and ``dw_label`` are
not touched either. The archive attribute ``published_labels`` records the file name, its sha256, the
date and the counts of the last import, and the archive's label-provenance record
(:func:`pipeline.labels.update_label_provenance`) becomes ``{"source": "published",
"presence_threshold": None, "min_valid_fraction": None, ...}`` (the published rule is unknown) with
``file``, ``sha256`` and ``matched`` (patch-seasons replaced), the previous record moved to its
history: patch-seasons that were not matched keep the vectors that record describes. Recomputing
the label vectors from ``dw_label`` afterwards (:func:`pipeline.labels.compute_archive_labels`) undoes
the import (and records so), and patches curated after an import need the import to be run again.

Writes. ``multi_hot`` is visited in blocks aligned to its write chunks (a shard when sharded) along
``patch``; a block is read, modified in memory and written back whole, and only when something
changed, so importing the same file twice writes nothing the second time. Only one block of
``patch_id``, ``status``, ``image_id`` and ``multi_hot`` is in memory at a time. Run the import when
no curation task is writing to the same archive.

Parsing. The file is parsed with :mod:`json` and an ``object_pairs_hook`` that turns each class list
into a 9-bit mask as soon as it is read (the lists of strings are never kept): a 60 MB file of 1M
entries parses in about 5 s with a peak of about 330 MB. The structure is validated before anything is
written; every problem raises :class:`PublishedLabelsError` naming the location id and image id at fault (non-string or
out-of-range class ids, keys that are not 7-digit location ids, repeated keys, values of the wrong
type). Files ending in ``.gz`` are decompressed; ``fsspec`` URLs are accepted.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from pipeline.archive import Archive
from pipeline.bands import DW_CLASSES
from pipeline.labels import update_label_provenance
from pipeline.store import MODALITY_ORDER, STATUS_DONE
from pipeline.store_target import is_local

N_CLASSES = len(DW_CLASSES)
_LOCATION_KEY = re.compile(r"^[0-9]{7}$")
_CLASS_BITS = {str(k): 1 << k for k in range(N_CLASSES)}
_USED = 1 << N_CLASSES  # flag set on an entry once it matched a patch-season
_INTS = tuple(range(1 << (N_CLASSES + 1)))  # one shared int object per (mask, flag): a pointer per entry
_VECTORS = np.array([[(m >> k) & 1 for k in range(N_CLASSES)] for m in range(1 << N_CLASSES)], dtype=np.uint8)
_EXAMPLES = 5


class PublishedLabelsError(ValueError):
    """The published-labels file is malformed, or the archive cannot take it."""


# ----------------------------------------------------------------------------------------------- parsing
class _Obj(dict):
    """A JSON object as parsed by :func:`_hook`; ``duplicates`` lists keys that occurred twice."""

    __slots__ = ("duplicates",)
    duplicates: list[str] | None


@dataclass(frozen=True)
class _Bad:
    """A value that is not a valid class list, with the reason (reported once its location is known)."""

    reason: str
    kind: str  # JSON type of the offending value


def _json_kind(value: Any) -> str:
    if isinstance(value, _Obj):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


_MASK_CACHE: dict[tuple, int] = {}
_MASK_CACHE_MAX = 4096


def _mask(values: list) -> int | _Bad:
    """Bit mask of a class-id list; a :class:`_Bad` describing the first invalid element."""
    key = tuple(values)
    try:
        cached = _MASK_CACHE.get(key)  # only lists of valid string ids are ever stored
    except TypeError:  # a nested list or object: invalid, reported below
        cached = None
    if cached is not None:
        return cached
    mask = 0
    for v in values:
        if not isinstance(v, str):
            shown = "{…}" if isinstance(v, _Obj) else "[…]" if isinstance(v, list) else json.dumps(v)
            return _Bad(f"class id {shown} is not a string (class ids are Dynamic World indices written "
                        'as strings, e.g. "4")', "a list")
        bit = _CLASS_BITS.get(v)
        if bit is None:
            return _Bad(f"class id {json.dumps(v)} is outside 0..{N_CLASSES - 1} (Dynamic World class "
                        "indices written as strings)", "a list")
        mask |= bit
    if len(_MASK_CACHE) < _MASK_CACHE_MAX:
        _MASK_CACHE[key] = _INTS[mask]
    return _INTS[mask]


def _hook(pairs: list[tuple[str, Any]]) -> _Obj:
    """Parse one JSON object: class lists become masks, other non-object values become :class:`_Bad`."""
    obj = _Obj()
    for key, value in pairs:
        if isinstance(value, list):
            obj[key] = _mask(value)
        elif isinstance(value, _Obj):
            obj[key] = value
        else:
            kind = _json_kind(value)
            obj[key] = _Bad(f"expected a list of class ids, got {kind}", kind)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        obj.duplicates = [k for k, _ in pairs if k in seen or seen.add(k)]
    else:
        obj.duplicates = None
    return obj


def _open_binary(path: str, storage_options: dict | None):
    if not is_local(path):
        import fsspec

        return fsspec.open(path, "rb", **(storage_options or {})).open()
    try:
        return open(path.removeprefix("file://"), "rb")
    except FileNotFoundError:
        raise PublishedLabelsError(f"published labels file not found: {path}") from None


def _sha256(path: str, storage_options: dict | None) -> str:
    h = hashlib.sha256()
    with _open_binary(path, storage_options) as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_published_labels(json_path: str | Path, storage_options: dict | None = None) -> dict[str, dict[str, int]]:
    """Parse and validate a published-labels file (``.gz`` decompressed); see :func:`parse_published_labels`."""
    path = str(json_path)
    name = path.rstrip("/").rsplit("/", 1)[-1]
    raw = _open_binary(path, storage_options)
    try:
        binary = gzip.GzipFile(fileobj=raw) if name.endswith(".gz") else raw
        with io.TextIOWrapper(binary, encoding="utf-8") as fh:
            return parse_published_labels(fh, name)
    except (OSError, EOFError) as err:
        raise PublishedLabelsError(f"{name}: cannot read: {err}") from None
    finally:
        raw.close()


def parse_published_labels(data: bytes | str | IO[str], name: str = "<labels>") -> dict[str, dict[str, int]]:
    """Validate the published JSON (text, bytes or a text file); location id → {L1C image id → class
    bit mask (bit k = class k)}. Raises :class:`PublishedLabelsError` naming the offending location and image id.
    """
    try:
        if hasattr(data, "read"):
            top = json.load(data, object_pairs_hook=_hook)
        else:
            top = json.loads(data, object_pairs_hook=_hook)
    except json.JSONDecodeError as err:
        raise PublishedLabelsError(
            f"{name}: not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except UnicodeDecodeError as err:
        raise PublishedLabelsError(f"{name}: not UTF-8 text: {err}") from None
    if not isinstance(top, _Obj):
        raise PublishedLabelsError(
            f"{name}: the top level must be an object mapping 7-digit location ids to objects of "
            f"image ids, got {_json_kind(top)}")
    if top.duplicates:
        raise PublishedLabelsError(f"{name}: location id {json.dumps(top.duplicates[0])} appears more than once")
    for loc, images in top.items():
        where = f"{name}: location {json.dumps(loc)}"
        if not _LOCATION_KEY.match(loc):
            raise PublishedLabelsError(f"{where}: the key is not a 7-digit location id (e.g. \"0000200\")")
        if not isinstance(images, _Obj):
            kind = images.kind if isinstance(images, _Bad) else "a list"
            raise PublishedLabelsError(f"{where}: expected an object mapping L1C image ids to class lists, got {kind}")
        if images.duplicates:
            raise PublishedLabelsError(f"{where}: image id {json.dumps(images.duplicates[0])} appears more than once")
        for image, mask in images.items():
            if not image.strip():
                raise PublishedLabelsError(f"{where}: empty image id")
            if isinstance(mask, _Bad):
                raise PublishedLabelsError(f"{where}, image {json.dumps(image)}: {mask.reason}")
            if isinstance(mask, _Obj):
                raise PublishedLabelsError(f"{where}, image {json.dumps(image)}: expected a list of class ids, "
                                           "got an object")
    return top


# ----------------------------------------------------------------------------------------------- report
@dataclass
class ImportReport:
    """What an import did. Counts of patch-seasons unless named ``json_*`` (entries of the file)."""

    file: str
    sha256: str
    store: str
    imported: str  # UTC ISO time
    json_locations: int = 0
    json_images: int = 0  # (location, image) entries in the file
    json_unlabelled: int = 0  # entries with an empty class list
    matched_labelled: int = 0  # patch-seasons that got a non-empty published vector
    matched_unlabelled: int = 0  # patch-seasons matched to an empty list: multi_hot set to all zero
    missing: int = 0  # file entries matching no done patch-season of the archive
    missing_locations: int = 0  # file locations none of whose entries matched (absent, not done, other images)
    missing_examples: list[str] = field(default_factory=list)  # a few "location/image" of the missing ones
    not_covered: int = 0  # done patch-seasons with no entry in the file (keep their computed vector)
    done_patches: int = 0
    n_seasons: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)  # matched patch-seasons per published class
    regions_written: int = 0

    @property
    def matched(self) -> int:
        return self.matched_labelled + self.matched_unlabelled

    def counts(self) -> dict[str, Any]:
        """The counts recorded in the archive attributes."""
        keep = ("json_locations", "json_images", "json_unlabelled", "matched_labelled", "matched_unlabelled",
                "missing", "missing_locations", "not_covered", "done_patches", "n_seasons", "class_counts")
        return {k: v for k, v in asdict(self).items() if k in keep}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def format_report(report: ImportReport) -> str:
    """A few lines for the command line."""
    done_ps = report.done_patches * report.n_seasons

    def pct(n: int, d: int) -> str:
        return f"{100.0 * n / d:.1f}%" if d else "n/a"

    lines = [
        f"published labels {report.file} (sha256 {report.sha256[:16]}…) → {report.store}",
        (f"  file: {report.json_images} images at {report.json_locations} locations "
         f"({report.json_unlabelled} with an empty class list)"),
        (f"  matched: {report.matched} patch-seasons of {done_ps} done ({pct(report.matched, done_ps)}): "
         f"{report.matched_labelled} labelled, {report.matched_unlabelled} unlabelled "
         "(empty list → multi_hot all zero)"),
        (f"  missing: {report.missing} file entries match no done patch-season"
         f" ({report.missing_locations} file locations without any match)"),
        f"  not covered: {report.not_covered} done patch-seasons have no entry (computed multi_hot kept)",
    ]
    if report.missing_examples:
        lines.append("  e.g. missing: " + ", ".join(report.missing_examples))
    if report.class_counts:
        width = max(len(c) for c in report.class_counts)
        lines.append("  classes in the imported labels (patch-seasons):")
        for name, n in report.class_counts.items():
            lines.append(f"    {name:<{width}}  {n:>9}  {pct(n, report.matched_labelled):>6}")
    lines.append(f"  {report.regions_written} multi_hot region(s) written; label_fraction unchanged "
                 "(fractions are not published)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- import
def _write_unit(arr) -> int:
    """Patch-axis length of one independently writable unit (a shard when sharded, else a chunk)."""
    shards = getattr(arr, "shards", None)
    return int((shards or arr.chunks)[0])


def _check_archive(group) -> int:
    """Checks the variables the import uses; returns the modality index of ``s2_l1c`` in ``image_id``."""
    expected = {"multi_hot": ("patch", "season", "class"), "image_id": ("patch", "season", "modality"),
                "status": ("patch",), "patch_id": ("patch",)}
    for name, dims in expected.items():
        if name not in group:
            raise PublishedLabelsError(f"the archive has no variable {name!r}")
        found = tuple(group[name].metadata.dimension_names or ())
        if found != dims:
            raise PublishedLabelsError(f"archive variable {name!r} has dims {found}, expected {dims}")
    if group["multi_hot"].shape[2] != N_CLASSES:
        raise PublishedLabelsError(f"multi_hot has {group['multi_hot'].shape[2]} classes, expected {N_CLASSES}")
    if "class" in group and [str(c) for c in group["class"][:]] != list(DW_CLASSES):
        raise PublishedLabelsError(f"the archive's class order {list(group['class'][:])} is not the Dynamic World "
                                   f"order {list(DW_CLASSES)}")
    modalities = [str(m) for m in group["modality"][:]] if "modality" in group else list(MODALITY_ORDER)
    if "s2_l1c" not in modalities:
        raise PublishedLabelsError(f"the archive's modality coordinate {modalities} has no s2_l1c")
    return modalities.index("s2_l1c")


def import_published_labels(json_path: str | Path, store: str, storage_options: dict | None = None,
                            overwrite: bool = True, block_patches: int = 1024) -> ImportReport:
    """Write the published SSL4EO-S12-ML multi-labels into ``store``'s ``multi_hot`` (see the module docstring).

    ``storage_options`` apply to the store and to a ``json_path`` URL. With ``overwrite=False`` an
    archive that already records an import (attribute ``published_labels``) is refused. Blocks span
    whole write chunks along ``patch`` and at least ``block_patches`` patches.
    """
    if block_patches < 1:
        raise ValueError(f"block_patches must be >= 1, got {block_patches}")
    group = Archive.of(store, storage_options).open("r+")
    if not overwrite and "published_labels" in group.attrs:
        prev = group.attrs["published_labels"]
        raise PublishedLabelsError(f"{store}: published labels were already imported ({prev.get('file')}, "
                                   f"{prev.get('imported')}); pass overwrite=True to import again")
    l1c = _check_archive(group)
    name = str(json_path).rstrip("/").rsplit("/", 1)[-1]
    labels = read_published_labels(json_path, storage_options)  # validated before anything is written
    digest = _sha256(str(json_path), storage_options)

    report = ImportReport(file=name, sha256=digest, store=str(store),
                          imported=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    report.json_locations = len(labels)
    report.json_images = sum(len(v) for v in labels.values())
    report.json_unlabelled = sum(1 for v in labels.values() for m in v.values() if m == 0)

    mh_arr, id_arr, st_arr, pid_arr = group["multi_hot"], group["image_id"], group["status"], group["patch_id"]
    n_patch, n_seasons = int(mh_arr.shape[0]), int(mh_arr.shape[1])
    report.n_seasons = n_seasons
    unit = math.lcm(_write_unit(mh_arr), int(id_arr.chunks[0]), int(st_arr.chunks[0]), int(pid_arr.chunks[0]))
    step = unit * max(1, -(-block_patches // unit))
    mask_counts: Counter[int] = Counter()
    matched_locations: set[str] = set()

    for p0 in range(0, n_patch, step):
        p1 = min(p0 + step, n_patch)
        done = np.asarray(st_arr[p0:p1]) == STATUS_DONE
        n_done = int(done.sum())
        if not n_done:
            continue
        report.done_patches += n_done
        ids = np.asarray(pid_arr[p0:p1]).tolist()
        rows = [i for i in np.flatnonzero(done).tolist() if ids[i] in labels]
        matched_here = 0
        if rows:
            images = np.asarray(id_arr[p0:p1, :, l1c]).tolist()
            block = np.asarray(mh_arr[p0:p1])
            before = block.copy()
            for i in rows:
                entries = labels[ids[i]]
                for s in range(n_seasons):
                    image = images[i][s]
                    mask = entries.get(image) if image else None
                    if mask is None:
                        continue
                    bits = mask & ~_USED
                    block[i, s] = _VECTORS[bits]
                    entries[image] = _INTS[bits | _USED]
                    mask_counts[bits] += 1
                    matched_here += 1
                    matched_locations.add(ids[i])
            if not np.array_equal(block, before):
                mh_arr[p0:p1] = block
                report.regions_written += 1
        report.not_covered += n_done * n_seasons - matched_here

    report.matched_unlabelled = mask_counts.get(0, 0)
    report.matched_labelled = sum(mask_counts.values()) - report.matched_unlabelled
    counts = np.zeros(N_CLASSES, dtype=np.int64)
    for bits, n in mask_counts.items():
        counts += _VECTORS[bits].astype(np.int64) * n
    report.class_counts = {c: int(n) for c, n in zip(DW_CLASSES, counts, strict=True)}
    for loc, entries in labels.items():
        if loc not in matched_locations and entries:
            report.missing_locations += 1
        for image, mask in entries.items():
            if not mask & _USED:
                report.missing += 1
                if len(report.missing_examples) < _EXAMPLES:
                    report.missing_examples.append(f"{loc}/{image}")

    group.attrs["published_labels"] = {
        "file": report.file,
        "sha256": report.sha256,
        "imported": report.imported,
        "counts": report.counts(),
        "replaces": "multi_hot of matched patch-seasons (an empty class list gives an all-zero vector)",
        "label_fraction": "unchanged: the published labels hold presence only, no fractions",
    }
    update_label_provenance(Archive.of(store, storage_options).open("r+"), "published", None, None,
                            updated=report.imported, file=report.file, sha256=report.sha256, matched=report.matched)
    return report
