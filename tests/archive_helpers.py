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
