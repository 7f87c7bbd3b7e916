"""Build small curated archives for tests with the real curation steps (no Prefect)."""

from __future__ import annotations

from typing import Any

import zarr

from pipeline import curate as steps
from pipeline.manifest import Manifest


def curate_all(manifest: Manifest, source=None) -> zarr.Group:
    """Prepare the archive and process every pending shard; returns the archive's zarr group."""
    locations, layout = steps.prepare(manifest, source=source)
    for shard in steps.pending_shards(manifest, layout):
        steps.process_shard(manifest, layout, shard, locations[layout.shard_slice(shard)], source=source)
    return zarr.open_group(manifest.store.path, mode="r")


def synthetic_archive(path, n_locations: int, size_px: int, patches_per_shard: int, seed: int = 1,
                      sampling_seed: int = 2, top_n_cities: int = 40, **synthetic: Any) -> str:
    """A fully curated synthetic archive at ``path``; ``synthetic`` sets source options (e.g. cloud_probability)."""
    manifest = Manifest.model_validate({
        "source": {"kind": "synthetic", "synthetic": {"seed": seed, **synthetic}},
        "sampling": {"n_locations": n_locations, "top_n_cities": top_n_cities, "seed": sampling_seed},
        "patch": {"size_px": size_px},
        "store": {"path": str(path), "patches_per_shard": patches_per_shard},
    })
    curate_all(manifest)
    return str(path)


def split_archive_with_a_failed_train_patch(path, size_px: int = 32) -> str:
    """16 locations with the default split (by city) and the first train patch marked failed: the archive the
    split-aware statistics and training tests read (done patches of a split, never a failed one).
    """
    from pipeline.split import split_indices, write_split
    from pipeline.store import STATUS_FAILED

    synthetic_archive(path, n_locations=16, size_px=size_px, patches_per_shard=4, top_n_cities=8)
    write_split(str(path))
    group = zarr.open_group(str(path), mode="r+")
    status = group["status"][:]
    status[int(split_indices(str(path), "train")[0])] = STATUS_FAILED
    group["status"][:] = status
    return str(path)


def without_split(archive, dest) -> str:
    """A copy of ``archive`` without its split record, as an archive curated before splits existed."""
    import shutil

    from pipeline.split import read_split

    shutil.copytree(archive, dest)
    group = zarr.open_group(str(dest), mode="r+")
    if "split" in group.attrs:
        del group.attrs["split"]
    assert read_split(str(dest)) is None
    return str(dest)
