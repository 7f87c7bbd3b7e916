"""Curation steps without Prefect: retries of transient errors, failed patches, resumable shards."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from archive_helpers import curate_all
from pipeline import curate as steps
from pipeline.manifest import Manifest
from pipeline.sources import TransientSourceError
from pipeline.store import STATUS_DONE, STATUS_FAILED, STATUS_TODO


def manifest(tmp_path, name: str, **synthetic) -> Manifest:
    return Manifest.model_validate({
        "source": {"kind": "synthetic", "synthetic": {"seed": 5, **synthetic}},
        "sampling": {"n_locations": 6, "top_n_cities": 20, "seed": 3},
        "patch": {"size_px": 24},
        "store": {"path": str(tmp_path / f"{name}.zarr"), "patches_per_shard": 3},
        "compute": {"retries": 6, "retry_delay_s": 0.0},
    })


def test_transient_errors_are_retried_to_identical_data(tmp_path):
    clean = curate_all(manifest(tmp_path, "clean"))
    flaky = curate_all(manifest(tmp_path, "flaky", fail_rate=0.3))
    assert (flaky["status"][:] == STATUS_DONE).all()
    for name in ("s2_l1c", "s1_grd", "dw_label", "multi_hot", "image_id"):
        np.testing.assert_array_equal(clean[name][:], flaky[name][:], err_msg=name)


def test_persistent_transient_error_propagates_for_the_task_to_retry(tmp_path):
    m = manifest(tmp_path, "down", fail_rate=1.0)
    locations, layout = steps.prepare(m)
    with pytest.raises(TransientSourceError):
        steps.process_shard(m, layout, 0, locations[layout.shard_slice(0)])
    assert (zarr.open_group(m.store.path, mode="r")["status"][:] == STATUS_TODO).all()


def test_permanent_errors_become_failed_patches_with_reason(tmp_path):
    m = manifest(tmp_path, "cloudy", cloud_probability=1.0)
    m = m.model_copy(update={"cloud_filter": m.cloud_filter.model_copy(update={"max_cloudy_pixel_percentage": 0.0})})
    g = curate_all(m)
    assert (g["status"][:] == STATUS_FAILED).all()
    assert all(r.startswith("NoImageFound: season 0") for r in g["status_reason"][:])
    assert steps.pending_shards(m, steps.prepare(m)[1]) == []
    assert steps.pending_shards(m, steps.prepare(m)[1], retry_failed=True) == [0, 1]


def test_shard_is_skipped_once_done_and_prepare_is_idempotent(tmp_path):
    m = manifest(tmp_path, "resume")
    locations, layout = steps.prepare(m)
    first = steps.process_shard(m, layout, 1, locations[layout.shard_slice(1)])
    assert (first.done, first.skipped) == (3, 0)
    assert steps.pending_shards(m, layout) == [0]
    again = steps.process_shard(m, layout, 1, locations[layout.shard_slice(1)])
    assert (again.done, again.skipped) == (0, 3)
    locations2, _ = steps.prepare(m)
    assert locations2 == locations


def test_retry_condition_only_for_transient_errors():
    from prefect.states import Completed, Failed

    from flows.curate import _retry_transient

    assert _retry_transient(None, None, Failed(data=TransientSourceError("429")))
    assert not _retry_transient(None, None, Failed(data=ValueError("bug")))
    assert not _retry_transient(None, None, Completed(data=1))
