"""Issue 10, parts 2, 4 and 7: failures do not abort or hang the curation flow.

* A shard out of retries is recorded as failed (with its reason) and the other shards go on; the
  run's summary lists what a rerun with ``--retry-failed`` can fix, and pretraining waits for it.
* A run killed while shards hold source slots leaves no slot behind: the next run completes.
* A second run on an archive that is being curated is told and refused.
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

from pipeline.store import STATUS_DONE, STATUS_FAILED, STATUS_TODO

pytestmark = pytest.mark.slow


def write_manifest(path: Path, store: Path, n_locations: int = 8, size: int = 32, processes: bool = False,
                   synthetic: dict | None = None, compute: dict | None = None) -> Path:
    data = {
        "name": "failure-test",
        "source": {"kind": "synthetic", "synthetic": {"seed": 3, "cloud_probability": 0.0, **(synthetic or {})}},
        "sampling": {"n_locations": n_locations, "top_n_cities": 50, "seed": 7},
        "patch": {"size_px": size},
        "store": {"path": str(store), "patches_per_shard": 2},
        "compute": {"n_workers": 1, "threads_per_worker": 2, "processes": processes, "memory_limit": "2GiB",
                    "retries": 1, "retry_delay_s": 0.0, **(compute or {})},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_persistent_transient_errors_are_recorded_and_the_run_goes_on(tmp_path, harness):
    from flows.curate import curate_manifest

    store = tmp_path / "a.zarr"
    train_cfg = tmp_path / "train.yaml"
    train_cfg.write_text("output_dir: never\n")
    manifest = write_manifest(tmp_path / "m.yaml", store, synthetic={"fail_rate": 1.0})
    data = yaml.safe_load(manifest.read_text())
    data["pretrain"] = {"enabled": True, "config": str(train_cfg)}
    manifest.write_text(yaml.safe_dump(data))
    summary = curate_manifest(str(manifest))  # returns: no exception aborts the flow
    g = zarr.open_group(str(store), mode="r")
    assert (g["status"][:] == STATUS_FAILED).all()
    assert all(r.startswith("TransientSourceError: ") for r in g["status_reason"][:])
    run = summary["this_run"]
    assert run["shards"] == 4 and run["failed"] == run["retryable"] == 8
    assert run["failure_reasons"] == {"TransientSourceError": 8}
    assert summary["pretraining"].startswith("not started")


def test_a_failing_shard_does_not_stop_the_others(tmp_path, harness, monkeypatch):
    from flows.curate import curate_manifest
    from pipeline import curate as steps

    real = steps.process_shard

    def broken_shard_1(manifest, layout, shard, *args, **kwargs):
        if shard == 1:
            raise RuntimeError("disk on fire")
        return real(manifest, layout, shard, *args, **kwargs)

    monkeypatch.setattr(steps, "process_shard", broken_shard_1)
    store = tmp_path / "a.zarr"
    summary = curate_manifest(str(write_manifest(tmp_path / "m.yaml", store)))
    status = zarr.open_group(str(store), mode="r")["status"][:]
    reasons = zarr.open_group(str(store), mode="r")["status_reason"][:]
    assert (status[2:4] == STATUS_FAILED).all()
    assert list(reasons[2:4]) == ["ShardFailed: RuntimeError: disk on fire"] * 2
    assert (status[[0, 1, 4, 5, 6, 7]] == STATUS_DONE).all()  # every other shard finished
    assert summary["this_run"]["retryable"] == 2
    # the retry with the shard working again finishes the archive
    monkeypatch.setattr(steps, "process_shard", real)
    again = curate_manifest(str(write_manifest(tmp_path / "m.yaml", store)), retry_failed=True)
    assert again["this_run"]["retryable"] == 0 and again["status"]["done"] == 8


def test_second_run_on_a_busy_archive_is_refused(tmp_path, harness):
    from flows.curate import curate_manifest
    from pipeline.store_target import ArchiveBusy, archive_lock

    store = tmp_path / "a.zarr"
    manifest = write_manifest(tmp_path / "m.yaml", store)
    with archive_lock(str(store)):
        with pytest.raises(ArchiveBusy, match="another curation run"):
            curate_manifest(str(manifest))
    assert not store.exists()  # the refused run wrote nothing


def test_run_killed_while_holding_the_only_source_slot_does_not_block_the_next(tmp_path):
    """source_concurrency 1: the killed run held the only slot; the rerun must still finish."""
    store = tmp_path / "a.zarr"
    manifest = write_manifest(tmp_path / "m.yaml", store, n_locations=12, size=48, processes=True,
                              compute={"source_concurrency": 1, "n_workers": 2, "threads_per_worker": 1})
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "runs.log"
    for _ in range(2):  # two kills in a row: a leaked slot would also pile up
        proc = start_curate(manifest, env, log)
        deadline, killed = time.time() + 240, False
        while time.time() < deadline and proc.poll() is None:
            try:
                status = zarr.open_group(str(store), mode="r")["status"][:]
            except Exception:  # noqa: BLE001 - the template may not exist yet
                status = None
            if status is not None and (status != STATUS_TODO).sum() >= 1 and (status == STATUS_TODO).any():
                kill_tree(proc.pid)  # a shard is in flight: it holds the only slot
                killed = True
                break
            time.sleep(0.05)
        proc.wait(timeout=60)
        assert killed, "the run finished or stalled before it could be killed mid-way:\n" + log.read_text()[-3000:]
    rerun = start_curate(manifest, env, log)
    try:
        assert rerun.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if rerun.poll() is None:
            kill_tree(rerun.pid)
    status = zarr.open_group(str(store), mode="r")["status"][:]
    assert (status == STATUS_DONE).all(), np.unique(status, return_counts=True)


def test_cli_exits_1_naming_the_failures_then_retry_failed_finishes(tmp_path):
    """The whole story through the command line: persistent transient errors → exit 1 with a summary
    and the in-task retries in the log; the same manifest without faults (same archive: fail_rate is
    not part of the hash) and --retry-failed → exit 0, every patch done.
    """
    store = tmp_path / "a.zarr"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = tmp_path / "run.log"
    manifest = write_manifest(tmp_path / "m.yaml", store, n_locations=4, synthetic={"fail_rate": 1.0})
    assert start_curate(manifest, env, log).wait(timeout=300) == 1
    text = log.read_text()
    assert "error: 4 patches failed after their retries (TransientSourceError ×4)" in text
    assert "rerun with --retry-failed" in text
    assert "transient error for patch" in text and "retry 1 of 1" in text  # in-task retries are logged
    assert text.count("Traceback (most recent call last)") <= 1
    manifest = write_manifest(tmp_path / "m.yaml", store, n_locations=4)
    log2 = tmp_path / "retry.log"
    assert start_curate(manifest, env, log2, "--retry-failed").wait(timeout=300) == 0, log2.read_text()[-3000:]
    assert (zarr.open_group(str(store), mode="r")["status"][:] == STATUS_DONE).all()


def test_a_shard_waiting_for_a_source_slot_says_so(monkeypatch):
    """The cluster-wide source limit: a shard task that finds every slot taken logs that it waits,
    and for how long, then runs once the slot is released.
    """
    import logging

    from distributed import Client, LocalCluster, Semaphore

    import flows.curate as flow_module
    from pipeline.manifest import Manifest

    monkeypatch.setattr(flow_module, "SLOT_WAIT_LOG_S", 0.3)
    manifest = Manifest.model_validate({"compute": {"source_concurrency": 1}})
    messages: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    recorder = Recorder(level=logging.INFO)
    module_logger = logging.getLogger("flows.curate")
    module_logger.addHandler(recorder)
    monkeypatch.setattr(module_logger, "level", logging.INFO)

    def shard_task():
        with flow_module.source_slot(manifest, 3):
            return "ran"

    with LocalCluster(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        other_run = Semaphore(max_leases=1, name="softcon-source-synthetic")
        assert other_run.acquire(timeout=5)
        fut = client.submit(shard_task, pure=False)
        time.sleep(1.5)
        assert not fut.done()  # the only slot is taken
        other_run.release()
        assert fut.result(timeout=30) == "ran"
    module_logger.removeHandler(recorder)
    assert "shard 3: waiting for a slot of softcon-source-synthetic (all 1 in use) for 0 s" in messages
    assert any(m.startswith("shard 3: got a source slot after") for m in messages)
