"""The curation flow end to end on the synthetic world: under Prefect's test harness, and killed
mid-run in a subprocess then resumed (the resumed archive must equal an uninterrupted one).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from process_helpers import kill_tree, start_curate

from pipeline.store import STATUS_DONE, STATUS_TODO, open_archive

pytestmark = pytest.mark.slow

SECRET = "do-not-store-4711"
ARRAYS = ("s2_l1c", "s2_l2a", "s1_grd", "dw_label", "label_fraction", "multi_hot", "acquired", "image_id",
          "cloud_pct", "label_method", "status", "status_reason")


def write_manifest(path: Path, store: Path, n_locations: int, size: int, processes: bool) -> Path:
    data = {
        "name": "flow-test",
        "source": {"kind": "synthetic", "synthetic": {"seed": 3, "cloud_probability": 0.5}},
        "sampling": {"n_locations": n_locations, "top_n_cities": 50, "seed": 7},
        "patch": {"size_px": size},
        "store": {"path": str(store), "patches_per_shard": 2},
        "compute": {"n_workers": 1, "threads_per_worker": 2, "processes": processes, "memory_limit": "2GiB",
                    "retries": 2, "retry_delay_s": 0.01},
    }
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, harness):
    """An uninterrupted run of the flow, in this process, under the Prefect test harness."""
    from flows.curate import curate_manifest
    from pipeline.manifest import load_manifest

    tmp = tmp_path_factory.mktemp("reference")
    manifest = write_manifest(tmp / "m.yaml", tmp / "ref.zarr", n_locations=12, size=32, processes=False)
    # As the CLI does: the manifest is loaded once and the flows get the model. It carries a credential
    # (ignored for a local store) that must not reach Prefect's records.
    loaded = load_manifest(manifest)
    store = loaded.store.model_copy(update={"storage_options": {"secret": SECRET}})
    loaded = loaded.model_copy(update={"store": store})
    summary = curate_manifest(loaded)
    return manifest, tmp / "ref.zarr", summary


def test_flow_builds_complete_archive(reference_run):
    manifest, store, summary = reference_run
    ds = open_archive(str(store))
    status = ds["status"].values
    assert summary["status"]["todo"] == 0
    assert summary["this_run"]["done"] + summary["this_run"]["failed"] == 12
    assert (status != STATUS_TODO).all() and (status == STATUS_DONE).sum() >= 6
    assert ds.attrs["synthetic"] is True and ds.attrs["source"]["synthetic"] is True
    done = status == STATUS_DONE
    s2 = ds["s2_l1c"].values[done]
    assert s2.shape[1:] == (4, 13, 32, 32) and s2.max() > 0
    # every done patch-season has dates, image ids and a cloud cover under the filter
    assert (ds["cloud_pct"].values[done][..., :2] < 20).all()
    assert all(i for i in ds["image_id"].values[done].ravel())
    # label vectors agree with the label maps written beside them
    from pipeline.labels import label_vectors

    frac, mh = label_vectors(ds["dw_label"].values[done])
    np.testing.assert_allclose(ds["label_fraction"].values[done], frac, atol=1e-6)
    np.testing.assert_array_equal(ds["multi_hot"].values[done], mh)
    assert Path(str(store) + ".locations.parquet").exists()
    report = Path(summary["report"])
    assert (report / "class_frequencies.png").stat().st_size > 1000
    assert summary["pretraining"] == "not requested"


def test_flows_get_the_loaded_manifest_and_prefect_stores_no_credential(reference_run, harness):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
    params = {r.name: r.parameters for r in runs if "manifest" in r.parameters}
    assert params, "no flow run recorded a manifest parameter"
    text = repr(params)
    assert SECRET not in text
    assert "'secret': '<redacted>'" in text  # the model itself was passed, as a JSON dump without the value


def test_rerun_skips_everything(reference_run, harness):
    from flows.curate import curate_manifest

    manifest, store, _ = reference_run
    before = zarr.open_group(str(store), mode="r")["s2_l1c"][:]
    summary = curate_manifest(str(manifest))
    assert summary["this_run"]["shards"] == 0 and summary["this_run"]["done"] == 0
    np.testing.assert_array_equal(zarr.open_group(str(store), mode="r")["s2_l1c"][:], before)


def test_killed_run_resumes_to_identical_archive(reference_run, tmp_path):
    ref_manifest, ref_store, _ = reference_run
    store = tmp_path / "resumed.zarr"
    manifest = write_manifest(tmp_path / "m.yaml", store, n_locations=12, size=32, processes=True)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = tmp_path / "runs.log"
    proc = start_curate(manifest, env, log)
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        try:
            status = zarr.open_group(str(store), mode="r")["status"][:]
        except Exception:  # noqa: BLE001 - the template may not exist yet
            status = None
        if status is not None and 2 <= (status != STATUS_TODO).sum() < len(status):
            kill_tree(proc.pid)
            killed_at = status.copy()
            break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed_at is not None, "the run finished or stalled before it could be killed mid-way"
    partial = zarr.open_group(str(store), mode="r")["status"][:]
    assert (partial == STATUS_TODO).any(), "nothing was left to resume"
    second = start_curate(manifest, env, log)
    assert second.wait(timeout=300) == 0, log.read_text()[-3000:]
    a, b = zarr.open_group(str(ref_store), mode="r"), zarr.open_group(str(store), mode="r")
    for name in ARRAYS:
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name)


def test_local_ssl4eo_copy_through_the_flow(tmp_path, harness, shared_data):
    """A real SSL4EO-S12 location (two seasons on disk) curated by the same flow."""
    from flows.curate import curate_manifest

    store = tmp_path / "local.zarr"
    manifest = tmp_path / "local.yaml"
    manifest.write_text(yaml.safe_dump({
        "name": "local-test",
        "source": {"kind": "local", "local": {"root": str(shared_data / "ssl4eo_s12")}},
        "seasons": {"reference_dates": ["2020-06-21", "2020-09-22"]},
        "sampling": {"n_locations": 5},
        "store": {"path": str(store), "patches_per_shard": 1},
        "compute": {"n_workers": 1, "processes": False},
    }))
    summary = curate_manifest(str(manifest))
    assert summary["status"] == {"todo": 0, "done": 1, "failed": 0}
    ds = open_archive(str(store))
    assert ds.attrs["synthetic"] is False and ds.attrs["source"]["name"] == "ssl4eo_local"
    assert list(ds["patch_id"].values) == ["0000200"]
    import rasterio

    acq = ds["image_id"].values[0, 0, 0]
    with rasterio.open(shared_data / "ssl4eo_s12" / "s2c" / "0000200" / acq / "B2.tif") as src:
        np.testing.assert_array_equal(ds["s2_l1c"].values[0, 0, 1], src.read(1))
    assert ds["s1_grd"].dtype == np.float32 and np.isfinite(ds["s1_grd"].values).all()


def test_flow_ends_with_pretraining_when_asked(tmp_path, harness):
    """Curate → pretrain: the flow's final step trains on the new archive (and resumes on a rerun)."""
    from flows.curate import curate_manifest

    train_cfg = tmp_path / "train.yaml"
    train_cfg.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "run"), "crop_size": 24, "batch_size": 8, "num_workers": 0, "epochs": 1,
        "max_steps_per_epoch": 2, "proj_hidden": 32, "proj_out": 16, "pred_hidden": 32}))
    # 8 locations: the train split (about 70 %) still fills two batches of 8 images
    manifest = write_manifest(tmp_path / "m.yaml", tmp_path / "a.zarr", n_locations=8, size=32, processes=False)
    data = yaml.safe_load(manifest.read_text())
    data["pretrain"] = {"enabled": True, "config": str(train_cfg)}
    data["evaluate"] = {"enabled": True, "protocols": ["knn"], "out_dir": str(tmp_path / "eval")}
    manifest.write_text(yaml.safe_dump(data))
    summary = curate_manifest(str(manifest))
    assert summary["pretraining"] == f"done: {tmp_path / 'run'}"
    assert summary["evaluation"] == f"done: {tmp_path / 'eval'}"
    table = (tmp_path / "eval" / "archive" / "results.md").read_text()
    assert "`run`" in table and "random:resnet18" in table and "pixels" in table
    assert (tmp_path / "run" / "backbone.safetensors").exists()
    rows = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3
    again = curate_manifest(str(manifest))  # resumes: nothing left to train, no rows added
    assert again["pretraining"].startswith("done")
    assert len((tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()) == 3
