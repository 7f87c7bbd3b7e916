"""The Zarr v3 archive: one store holding every modality, the label maps and vectors, and per-patch status.

Layout (dimension names in brackets; ``P`` patches = locations, ``S`` seasons)::

    s2_l1c          [patch, season, band_s2_l1c, y, x]  uint16 DN (reflectance × 10000), fill 0
    s2_l2a          [patch, season, band_s2_l2a, y, x]  uint16 DN, fill 0
    s1_grd          [patch, season, band_s1_grd, y, x]  float32 dB, fill NaN
    dw_label        [patch, season, y, x]               uint8 Dynamic World class, 255 = no label
    label_fraction  [patch, season, class]              float32 class fractions of valid pixels
    multi_hot       [patch, season, class]              uint8 presence (fraction > threshold)
    acquired        [patch, season, modality]           int32 days since 1970-01-01 (CF-decoded to dates), -1 = none
    image_id        [patch, season, modality]           string (S2 system:index, S1 product id)
    cloud_pct       [patch, season, modality]           float32 scene cloudy-pixel percentage (NaN for S1)
    label_method    [patch, season]                     string: "matched" | "mode" | ""
    status          [patch]                             int8: 0 todo, 1 done, 2 failed
    status_reason   [patch]                             string (why a patch failed)
    <product>_fraction, <product>_multi_hot  [patch, season, <product>_class]  optional extra label
                    products a source declares (synthetic: ``reference``, see :mod:`pipeline.reference`)
    dw_probability  [patch, season, class]              optional float32 mean Dynamic World class
                    probability of the valid label pixels (manifest ``labels.dw_probabilities``)
    coordinates: patch_id (7-digit), lon, lat, epsg, x, y (UTM centre), city, band names, class names, modality

Images and label maps use one (patch, season) per chunk inside shards of ``patches_per_shard``
patches (all seasons); small arrays are chunked by shard. Attributes hold the full manifest, its
hash, the source description (``synthetic: true`` for generated data), band and class names and
the software version.

Writing protocol (idempotent and resumable): :func:`create_archive` writes the template (metadata
and coordinates only, via xarray with ``compute=False``) and, last, the root attribute
``template_complete = true``; an archive without it is treated as never started and rewritten
(see :mod:`pipeline.store_target`, which also refuses to write where something else lives). Then
each shard is written by exactly one task with chunk-aligned region writes; the shard's ``status``
is written last. A rerun reads
``status`` and skips what is done, so nothing is duplicated; a shard interrupted before its status
was written is simply redone (sources are deterministic, so the bytes are the same).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from pipeline.bands import DW_CLASSES, LABEL_NODATA, MODALITY_DTYPES
from pipeline.grid import grid_record
from pipeline.locations import Location
from pipeline.manifest import CompressorConfig, Manifest
from pipeline.reference import archive_products, product_template
from pipeline.store_target import (  # noqa: F401 - ArchiveError is part of this module's interface
    SOFTWARE,
    TEMPLATE_MARKER,
    ArchiveError,
    check_target,
    is_url,
    remove_incomplete,
    target_state,
)

STATUS_TODO, STATUS_DONE, STATUS_FAILED = 0, 1, 2
STATUS_NAMES = {STATUS_TODO: "todo", STATUS_DONE: "done", STATUS_FAILED: "failed"}
MODALITY_ORDER = ("s2_l1c", "s2_l2a", "s1_grd")
NO_DATE = -1
STRING = np.dtypes.StringDType()
EPOCH = dt.date(1970, 1, 1)


def software_version() -> str:
    try:
        return version("softcon-ssl4eo")
    except PackageNotFoundError:  # running from a source tree without install
        return "0+unknown"


def compressors_for(cfg: CompressorConfig) -> list[Any] | None:
    """The Zarr v3 codecs of the image arrays for a manifest's compressor settings (None: uncompressed)."""
    if cfg.codec == "none":
        return None
    if cfg.codec == "zstd":
        return [ZstdCodec(level=cfg.clevel)]
    return [BloscCodec(cname=cfg.cname, clevel=cfg.clevel, shuffle=cfg.shuffle)]


def _fill(dtype: str) -> Any:
    return np.nan if np.dtype(dtype).kind == "f" else 0


@dataclass(frozen=True)
class ArchiveLayout:
    """Sizes and names derived from a manifest; the single place that knows the archive's shape."""

    n_patches: int
    n_seasons: int
    size: int
    patches_per_shard: int
    modalities: dict[str, tuple[str, ...]]
    classes: tuple[str, ...] = DW_CLASSES

    @classmethod
    def from_manifest(cls, manifest: Manifest, n_patches: int) -> "ArchiveLayout":
        return cls(
            n_patches=n_patches,
            n_seasons=len(manifest.seasons.reference_dates),
            size=manifest.patch.size_px,
            patches_per_shard=manifest.store.patches_per_shard,
            modalities=manifest.modalities.selected(),
        )

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> "ArchiveLayout":
        """The layout an archive records in its own root attributes (``layout``, ``band_names``, ``class_names``)."""
        try:
            shape = attrs["layout"]
            return cls(
                n_patches=int(shape["n_patches"]),
                n_seasons=int(shape["n_seasons"]),
                size=int(shape["size"]),
                patches_per_shard=int(shape["patches_per_shard"]),
                modalities={k: tuple(v) for k, v in dict(attrs["band_names"]).items()},
                classes=tuple(attrs.get("class_names", DW_CLASSES)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArchiveError(f"the archive's attributes do not describe its layout ({exc!r}): "
                               "not a complete softcon archive") from None

    @property
    def n_shards(self) -> int:
        return -(-self.n_patches // self.patches_per_shard)

    def shard_slice(self, shard: int) -> slice:
        a = shard * self.patches_per_shard
        return slice(a, min(a + self.patches_per_shard, self.n_patches))


def archive_template(manifest: Manifest, locations: list[Location],
                     source_description: dict) -> tuple[xr.Dataset, dict]:
    """Lazy (dask) dataset with the archive's variables, coordinates, attributes, and its zarr encoding."""
    layout = ArchiveLayout.from_manifest(manifest, len(locations))
    P, S, H, pps = layout.n_patches, layout.n_seasons, layout.size, layout.patches_per_shard
    M = len(MODALITY_ORDER)
    compressors = compressors_for(manifest.store.compressor)
    data_vars: dict[str, Any] = {}
    encoding: dict[str, dict] = {}

    def big(name: str, dims: tuple[str, ...], shape: tuple[int, ...], dtype: str, fill: Any, attrs: dict):
        inner = (1, 1) + shape[2:]
        shard = (min(pps, P), S) + shape[2:]
        data_vars[name] = xr.Variable(dims, da.full(shape, fill, dtype=dtype, chunks=shard), attrs)
        encoding[name] = {"chunks": inner, "shards": shard, "compressors": compressors, "fill_value": fill}

    def small(name: str, dims: tuple[str, ...], shape: tuple[int, ...], dtype: Any, fill: Any, attrs: dict):
        chunks = (min(pps, P),) + shape[1:]
        arr = da.full(shape, fill, dtype=dtype, chunks=chunks)
        data_vars[name] = xr.Variable(dims, arr, attrs)
        encoding[name] = {"chunks": chunks}
        if dtype is not STRING:
            encoding[name]["fill_value"] = fill

    for name, bands in layout.modalities.items():
        dtype = MODALITY_DTYPES[name]
        units = "dB" if name == "s1_grd" else "DN = reflectance x 10000"
        big(name, ("patch", "season", f"band_{name}", "y", "x"), (P, S, len(bands), H, H), dtype,
            _fill(dtype), {"units": units, "bands": list(bands)})
    big("dw_label", ("patch", "season", "y", "x"), (P, S, H, H), "uint8", LABEL_NODATA,
        {"nodata": LABEL_NODATA, "classes": list(DW_CLASSES), "palette": list(manifest.labels.palette)})
    small("label_fraction", ("patch", "season", "class"), (P, S, len(DW_CLASSES)), "float32", 0.0,
          {"description": "fraction of valid label pixels per class"})
    small("multi_hot", ("patch", "season", "class"), (P, S, len(DW_CLASSES)), "uint8", 0,
          {"presence_threshold": manifest.labels.presence_threshold,
           "min_valid_fraction": manifest.labels.min_valid_fraction})
    small("acquired", ("patch", "season", "modality"), (P, S, M), "int32", NO_DATE,
          {"units": "days since 1970-01-01", "calendar": "proleptic_gregorian"})
    small("image_id", ("patch", "season", "modality"), (P, S, M), STRING, "", {})
    small("cloud_pct", ("patch", "season", "modality"), (P, S, M), "float32", np.nan, {"units": "%"})
    small("label_method", ("patch", "season"), (P, S), STRING, "", {})
    small("status", ("patch",), (P,), "int8", STATUS_TODO,
          {"flag_values": list(STATUS_NAMES), "flag_meanings": " ".join(STATUS_NAMES.values())})
    small("status_reason", ("patch",), (P,), STRING, "", {})
    product_coords = {}  # the source's extra label products (pipeline.reference), absent for most sources
    for name, dims, classes, dtype, attrs in product_template(source_description, manifest.labels.presence_threshold):
        small(name, dims, (P, S, len(classes)), dtype, 0, attrs)
        product_coords[dims[-1]] = (dims[-1], np.array(classes, dtype=object))
    # acquired holds CF-encoded dates but is written raw by the shard tasks: keep xarray from re-encoding.
    data_vars["acquired"].attrs.pop("units")
    data_vars["acquired"].attrs.pop("calendar")

    coords = {
        "patch_id": ("patch", np.array([loc.id for loc in locations], dtype=object)),
        "lon": ("patch", np.array([loc.lon for loc in locations], dtype="float64")),
        "lat": ("patch", np.array([loc.lat for loc in locations], dtype="float64")),
        "epsg": ("patch", np.array([loc.epsg for loc in locations], dtype="int32")),
        "utm_x": ("patch", np.array([loc.x for loc in locations], dtype="float64")),
        "utm_y": ("patch", np.array([loc.y for loc in locations], dtype="float64")),
        "city": ("patch", np.array([loc.city for loc in locations], dtype=object)),
        "season": ("season", np.arange(S, dtype="int16")),
        "reference_date": ("season", np.array([str(d) for d in manifest.seasons.reference_dates], dtype=object)),
        "class": ("class", np.array(DW_CLASSES, dtype=object)),
        "modality": ("modality", np.array(MODALITY_ORDER, dtype=object)),
        **product_coords,
    }
    for name, bands in layout.modalities.items():
        coords[f"band_{name}"] = (f"band_{name}", np.array(bands, dtype=object))
    for name in ("patch_id", "lon", "lat", "epsg", "utm_x", "utm_y", "city"):
        encoding[name] = {"chunks": (min(pps, P),)}

    attrs = {
        "title": manifest.name,
        "dataset_version": manifest.version,
        "manifest": manifest.public_dump(),
        "manifest_hash": manifest.content_hash(),
        "source": source_description,
        "synthetic": bool(source_description.get("synthetic", False)),
        "band_names": {k: list(v) for k, v in layout.modalities.items()},
        "class_names": list(DW_CLASSES),
        "software": SOFTWARE,
        "software_version": software_version(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "layout": {"patches_per_shard": pps, "n_patches": P, "n_seasons": S, "size": H},
        TEMPLATE_MARKER: False,  # set to true by create_archive once every template array is written
    }
    # How every patch grid is rebuilt from (epsg, utm_x, utm_y): pipeline.grid's snapping rule.
    attrs["patch_grid"] = grid_record(manifest.patch.size_px, manifest.patch.resolution_m, manifest.patch.lattice_m)
    # The curation record of how the label vectors are made; later writers update it (pipeline.labels,
    # imported here because it imports this module).
    from pipeline.labels import LABEL_PROVENANCE_ATTR, provenance_record

    attrs[LABEL_PROVENANCE_ATTR] = provenance_record("curation", manifest.labels.presence_threshold,
                                                     manifest.labels.min_valid_fraction, updated=attrs["created"])
    ds = xr.Dataset(data_vars, coords=coords, attrs=attrs)
    return ds, encoding


def storage_options_for(path: str, storage_options: dict | None = None) -> dict | None:
    """Fsspec options for a store URL; ``file://`` URLs get ``auto_mkdir`` so nested keys can be written."""
    opts = dict(storage_options or {})
    if path.startswith("file://"):
        opts.setdefault("auto_mkdir", True)
    return opts or None if is_url(path) else None


def _storage_options(manifest: Manifest) -> dict | None:
    return storage_options_for(manifest.store.path, manifest.store.storage_options)


def open_group(path: str, mode: str = "r", storage_options: dict | None = None) -> zarr.Group:
    return zarr.open_group(path, mode=mode, storage_options=storage_options_for(path, storage_options),
                           zarr_format=3)


def archive_exists(path: str, storage_options: dict | None = None) -> bool:
    """True for a softcon archive whose template was completely written (see :func:`create_archive`)."""
    return target_state(path, storage_options_for(path, storage_options))[0] == "archive"


def create_archive(manifest: Manifest, locations: list[Location], source_description: dict) -> ArchiveLayout:
    """Write the template, or check that an existing archive was made from the same manifest.

    Refuses (:class:`~pipeline.store_target.StoreRefused`) a store path that holds anything but an
    empty folder or an archive of this manifest. The root group is created first with the manifest
    hash and ``template_complete: false``, the variables next, and ``template_complete: true`` last:
    a run killed at any moment before that leaves an archive that the next run recognises as its own
    unfinished template and writes again.
    """
    path, so = manifest.store.path, _storage_options(manifest)
    layout = ArchiveLayout.from_manifest(manifest, len(locations))
    state = check_target(path, so, manifest.content_hash())
    if state == "archive":
        return layout
    if state == "incomplete":
        remove_incomplete(path, so, manifest.content_hash())
    ds, encoding = archive_template(manifest, locations, source_description)
    zarr.open_group(path, mode="w-", zarr_format=3, storage_options=so,
                    attributes={"software": SOFTWARE, "manifest_hash": ds.attrs["manifest_hash"],
                                TEMPLATE_MARKER: False})
    # Coordinates and small numpy variables are written now; dask variables only as metadata.
    ds.to_zarr(path, mode="a", compute=False, encoding=encoding, zarr_format=3, consolidated=False,
               storage_options=so)
    zarr.open_group(path, mode="r+", zarr_format=3, storage_options=so).attrs[TEMPLATE_MARKER] = True
    return layout


@dataclass
class PatchResult:
    """Everything one patch (all seasons) contributes to the archive."""

    index: int
    status: int
    reason: str = ""
    images: dict[str, np.ndarray] = field(default_factory=dict)  # modality → (S, band, y, x)
    dw_label: np.ndarray | None = None  # (S, y, x)
    label_fraction: np.ndarray | None = None  # (S, C)
    multi_hot: np.ndarray | None = None  # (S, C)
    acquired: np.ndarray | None = None  # (S, M) int32
    image_id: np.ndarray | None = None  # (S, M) object
    cloud_pct: np.ndarray | None = None  # (S, M) float32
    label_method: np.ndarray | None = None  # (S,) object
    products: dict[str, np.ndarray] = field(default_factory=dict)  # extra label products: variable → (S, K)


def _empty_patch_arrays(layout: ArchiveLayout) -> dict[str, np.ndarray]:
    S, H, M, C = layout.n_seasons, layout.size, len(MODALITY_ORDER), len(layout.classes)
    out = {name: np.full((S, len(b), H, H), _fill(MODALITY_DTYPES[name]), dtype=MODALITY_DTYPES[name])
           for name, b in layout.modalities.items()}
    out.update(
        dw_label=np.full((S, H, H), LABEL_NODATA, np.uint8),
        label_fraction=np.zeros((S, C), np.float32),
        multi_hot=np.zeros((S, C), np.uint8),
        acquired=np.full((S, M), NO_DATE, np.int32),
        image_id=np.full((S, M), "", dtype=object),
        cloud_pct=np.full((S, M), np.nan, np.float32),
        label_method=np.full((S,), "", dtype=object),
    )
    return out


PATCH_VARIABLES = ("dw_label", "label_fraction", "multi_hot", "acquired", "image_id", "cloud_pct", "label_method")


def write_patches(group: zarr.Group, layout: ArchiveLayout, results: list[PatchResult]) -> None:
    """Write the results of consecutive patches (one shard task's work) and then their status.

    Results must cover a contiguous index range inside one shard, so the writes are shard-aligned
    when the whole shard is written and never touch another task's shard otherwise.
    """
    if not results:
        return
    results = sorted(results, key=lambda r: r.index)
    a, b = results[0].index, results[-1].index + 1
    if [r.index for r in results] != list(range(a, b)):
        raise ValueError("write_patches needs a contiguous run of patch indices")
    if a // layout.patches_per_shard != (b - 1) // layout.patches_per_shard:
        raise ValueError(f"patches {a}..{b - 1} span more than one shard")
    stacked: dict[str, list[np.ndarray]] = {}
    for r in results:
        arrays = _empty_patch_arrays(layout)
        if r.status == STATUS_DONE:
            for name in layout.modalities:
                arrays[name] = r.images[name]
            for name in PATCH_VARIABLES:
                arrays[name] = getattr(r, name)
        for name, arr in arrays.items():
            stacked.setdefault(name, []).append(arr)
    for name, parts in stacked.items():
        group[name][a:b] = np.stack(parts)
    _write_products(group, a, b, results)
    # Status last: a shard is only "done" once all its data is on disk.
    group["status_reason"][a:b] = np.array([r.reason for r in results], dtype=object)
    group["status"][a:b] = np.array([r.status for r in results], dtype=np.int8)


def _write_products(group: zarr.Group, a: int, b: int, results: list[PatchResult]) -> None:
    """The extra label products of patches ``a..b-1`` (zeros for failed ones); only variables the archive has."""
    names = sorted({n for r in results if r.status == STATUS_DONE for n in r.products if n in group})
    for name in names:
        like = next(r.products[name] for r in results if name in r.products)
        parts = [r.products[name] if r.status == STATUS_DONE and name in r.products else np.zeros_like(like)
                 for r in results]
        group[name][a:b] = np.stack(parts)


def read_status(path: str, storage_options: dict | None = None) -> np.ndarray:
    return open_group(path, "r", storage_options)["status"][:]


def open_archive(path: str, storage_options: dict | None = None, patches_per_chunk: int | None = None) -> xr.Dataset:
    """Open the archive with xarray; ``acquired`` decoded to dates. Chunks default to whole shards."""
    group = open_group(path, "r", storage_options)
    pps = patches_per_chunk or ArchiveLayout.from_attrs(group.attrs).patches_per_shard
    ds = xr.open_zarr(path, consolidated=False, chunks={"patch": pps},
                      storage_options=storage_options_for(path, storage_options),
                      zarr_format=3)
    days = ds["acquired"]
    ds["acquired"] = xr.where(days >= 0, np.datetime64("1970-01-01", "D") + days.astype("timedelta64[D]"),
                              np.datetime64("NaT", "D"))
    return ds


def date_to_days(d: dt.date) -> int:
    return (d - EPOCH).days


def count_failure_kinds(reasons, counts: dict[str, int] | None = None) -> dict[str, int]:
    """Failure reasons counted by kind (the text before the first colon, "unknown" when empty), added
    to ``counts`` when given.
    """
    counts = {} if counts is None else counts
    for r in reasons:
        key = str(r).split(":")[0] if r else "unknown"
        counts[key] = counts.get(key, 0) + 1
    return counts


def format_failure_kinds(counts: dict[str, int]) -> str:
    """``NoImageFound ×3, TransientSourceError ×1``."""
    return ", ".join(f"{k} ×{v}" for k, v in counts.items())


def summarize(path: str, storage_options: dict | None = None) -> dict:
    """Counts of done/failed/todo patches, failure reasons and the archive's identity.

    Label statistics (class frequencies, co-occurrence) are :func:`pipeline.labels.summary_statistics`;
    :func:`pipeline.labels.label_summary` adds their headline numbers to this summary.
    """
    # imported here: pipeline.labels imports this module
    from pipeline.labels import read_label_provenance

    group = open_group(path, "r", storage_options)
    status = group["status"][:]
    reasons = group["status_reason"][:]
    counts = {STATUS_NAMES[k]: int((status == k).sum()) for k in STATUS_NAMES}
    failures = count_failure_kinds(reasons[status == STATUS_FAILED])
    return {
        "path": path,
        "title": group.attrs.get("title"),
        "synthetic": bool(group.attrs.get("synthetic", False)),
        "source": group.attrs.get("source", {}).get("name"),
        "manifest_hash": group.attrs.get("manifest_hash"),
        "n_patches": int(len(status)),
        "n_seasons": ArchiveLayout.from_attrs(group.attrs).n_seasons,
        "status": counts,
        "failures": failures,
        "done_patches": counts["done"],
        "software_version": group.attrs.get("software_version"),
        "created": group.attrs.get("created"),
        "label_provenance": read_label_provenance(group),  # None when the archive tells nothing
        "label_products": archive_products(group),  # e.g. reference, dw_probability; {} without any
    }
