"""Test-wide settings: offline hubs, no Prefect telemetry, and the location of the real sample data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SOFTCON_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real EO samples (``../shared/data``); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real sample data not found at {SHARED_DATA} (set SOFTCON_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory):
    """Factory of small curated synthetic archives, each built once per test session and shared.

    ``small_archive(n_locations=12, size_px=32, patches_per_shard=4, **synthetic_options)`` returns the
    archive's path. Shared archives are read-only: a test that changes an archive builds its own with
    :func:`archive_helpers.synthetic_archive` (or copies one).
    """
    from archive_helpers import synthetic_archive

    made: dict[tuple, str] = {}

    def make(n_locations: int = 12, size_px: int = 32, patches_per_shard: int = 4, **options) -> str:
        key = (n_locations, size_px, patches_per_shard, tuple(sorted(options.items())))
        if key not in made:
            path = tmp_path_factory.mktemp("archive") / "a.zarr"
            made[key] = synthetic_archive(path, n_locations, size_px, patches_per_shard, **options)
        return made[key]

    return make


@pytest.fixture(scope="session")
def small_run(tmp_path_factory, small_archive):
    """Factory of tiny pretraining runs (:func:`run_helpers.tiny_run`) on a shared small archive, built once.

    ``small_run(**archive_parameters)`` returns ``(run_folder, archive_path)``; read-only like the archive.
    """
    from run_helpers import tiny_run

    made: dict[str, Path] = {}

    def make(**archive_parameters) -> tuple[Path, str]:
        archive = small_archive(**archive_parameters)
        if archive not in made:
            made[archive] = tiny_run(archive, tmp_path_factory.mktemp("run") / "run")
        return made[archive], archive

    return make


@pytest.fixture(scope="module")
def harness():
    """A temporary Prefect server and database for the flows of one test module."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def ee_offline(monkeypatch):
    """Earth Engine initialised against the static algorithm table shipped in the wheel (no network).

    ``_install_cloud_api_resource``, ``_FetchDataCatalogStac`` and ``ee.Reset`` are internal names of
    earthengine-api 1.7.x: keep this the only place that touches them.
    """
    ee = pytest.importorskip("ee")
    from ee import apitestcase

    monkeypatch.setattr(ee.data, "_install_cloud_api_resource", lambda: None)
    monkeypatch.setattr(ee.data, "getAlgorithms", apitestcase.GetAlgorithms)
    monkeypatch.setattr(ee.data, "computeValue", lambda x: {"value": "fakeValue"})
    monkeypatch.setattr(ee.deprecation, "_FetchDataCatalogStac", lambda: {})
    ee.Reset()
    ee.Initialize(None, "", project="offline-test")
    yield ee
    ee.Reset()
