"""The archive's train/val/test split: whole units (cities, grid cells), shares, seeds, storage, CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from archive_helpers import synthetic_archive
from typer.testing import CliRunner

from flows.cli import app
from pipeline import curate as steps
from pipeline.errors import BadInput
from pipeline.manifest import Manifest
from pipeline.split import (
    SPLIT_CODES,
    assign_units,
    codes_hash,
    compute_split,
    ensure_split,
    grid_cells,
    location_units,
    read_split,
    split_indices,
    write_split,
)
from pipeline.store import open_archive, open_group
from pipeline.store_target import ArchiveError

N_LOCATIONS = 240


def manifest_for(path: Path, n_locations: int, top_n_cities: int = 40, seed: int = 1,
                 sampling_seed: int = 2) -> Manifest:
    """The manifest :func:`archive_helpers.synthetic_archive` builds (tiny patches)."""
    return Manifest.model_validate({
        "source": {"kind": "synthetic", "synthetic": {"seed": seed}},
        "sampling": {"n_locations": n_locations, "top_n_cities": top_n_cities, "seed": sampling_seed},
        "patch": {"size_px": 16},
        "store": {"path": str(path), "patches_per_shard": 64},
    })


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> str:
    """An archive template (no patch data: a split needs only the locations) with many locations."""
    path = tmp_path_factory.mktemp("split") / "t.zarr"
    steps.prepare(manifest_for(path, N_LOCATIONS))
    return str(path)


@pytest.fixture
def archive(template, tmp_path) -> str:
    """A private copy of the template archive, for tests that change it."""
    dst = tmp_path / "a.zarr"
    shutil.copytree(template, dst)
    return str(dst)


@pytest.fixture(scope="module")
def curated(tmp_path_factory) -> str:
    """A tiny fully curated archive (for inspect, which reads label statistics)."""
    return synthetic_archive(tmp_path_factory.mktemp("curated") / "c.zarr", 8, 16, 4, top_n_cities=4)


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def units_of(path: str, by: str, grid_km: float = 100.0) -> np.ndarray:
    """Unit keys computed here from the archive's coordinates (city, else grid cell)."""
    g = open_group(path)
    row, col = grid_cells(g["lon"][:], g["lat"][:], grid_km)
    cells = np.array([f"{r}/{c}" for r, c in zip(row, col)], dtype=object)
    if by == "grid":
        return cells
    return np.array([str(c) or cell for c, cell in zip(g["city"][:], cells)], dtype=object)


# ------------------------------------------------------------------------------------------- blocking
@pytest.mark.parametrize("by", ["city", "grid"])
def test_units_never_straddle_splits(archive, by):
    record = write_split(archive, by=by, seed=3)
    codes, _ = read_split(archive)
    units = units_of(archive, by)
    n_units = len(set(units))
    assert n_units > 10  # enough units that straddling would show
    for unit in set(units):
        assert len(set(codes[units == unit].tolist())) == 1, f"unit {unit} is in two splits"
    assert sum(record["units"].values()) == n_units


def test_grid_split_blocks_test_from_train_in_space(archive):
    """No test location shares a grid cell with a train (or val) location; and the cells are ~grid_km."""
    grid_km = 100.0
    write_split(archive, by="grid", grid_km=grid_km, seed=0)
    g = open_group(archive)
    lon, lat = g["lon"][:], g["lat"][:]
    codes = read_split(archive)[0]
    row, col = grid_cells(lon, lat, grid_km)
    cell = [(r, c) for r, c in zip(row.tolist(), col.tolist())]
    test_cells = {c for c, k in zip(cell, codes) if k == SPLIT_CODES["test"]}
    other_cells = {c for c, k in zip(cell, codes) if k != SPLIT_CODES["test"]}
    assert test_cells and other_cells
    assert not test_cells & other_cells
    # Locations that share a cell are at most one cell diagonal apart (cells are about grid_km square).
    for c in set(cell):
        members = [i for i, ci in enumerate(cell) if ci == c]
        for i in members:
            for j in members:
                assert haversine_km(lon[i], lat[i], lon[j], lat[j]) <= grid_km * math.sqrt(2) * 1.1


def haversine_km(lon1, lat1, lon2, lat2) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(a))


@pytest.mark.parametrize("lat", [0.0, 45.0, 70.0])
def test_grid_cells_are_about_grid_km_square(lat):
    """Points a bit under grid_km apart share a row/column sometimes; points 2 × grid_km apart never."""
    grid_km, k = 100.0, 2 * math.pi * 6371.0 / 360
    lon0 = np.linspace(-179.0, 179.0, 500)
    lat0 = np.full_like(lon0, lat)
    row0, col0 = grid_cells(lon0, lat0, grid_km)
    north = grid_cells(lon0, lat0 + 2 * grid_km / k, grid_km)[0]
    assert (north != row0).all()
    east = grid_cells(lon0 + 2 * grid_km / (k * math.cos(math.radians(lat))), lat0, grid_km)[1]
    same_row = grid_cells(lon0 + 2 * grid_km / (k * math.cos(math.radians(lat))), lat0, grid_km)[0] == row0
    assert (east[same_row] != col0[same_row]).all()
    # Columns tile the row: about circumference / grid_km of them at this latitude.
    dense = np.linspace(-180.0, 179.999, 20000)
    n_cols = len(np.unique(grid_cells(dense, np.full_like(dense, lat), grid_km)[1]))
    expected = 360 * k * math.cos(math.radians((row0[0] + 0.5) * grid_km / k)) / grid_km
    assert abs(n_cols - expected) <= 1


def test_locations_without_a_city_fall_back_to_their_grid_cell():
    lon = np.array([10.0, 10.01, 30.0, 30.01])
    lat = np.array([50.0, 50.01, -20.0, -20.0])
    keys, fell_back = location_units(lon, lat, np.array(["Berlin", "", "", "  "], dtype=object), "city", 100.0)
    assert fell_back == 3
    assert keys[0] == "city:Berlin"
    assert keys[1].startswith("cell:") and keys[2] == keys[3] != keys[1]
    _, record = compute_split(lon, lat, np.array(["", "", "", ""], dtype=object), by="city", val=0.0, test=0.5)
    assert record["grid_km"] == 100.0 and record["units"] == {"train": 1, "val": 0, "test": 1}
    _, record = compute_split(lon, lat, np.array(["a", "a", "b", "b"], dtype=object), by="city")
    assert "grid_km" not in record


# --------------------------------------------------------------------------------------------- shares
@pytest.mark.parametrize("by", ["city", "grid"])
def test_realised_shares_are_within_one_unit_of_the_targets(archive, by):
    val, test = 0.15, 0.25
    record = write_split(archive, by=by, val=val, test=test, seed=7)
    codes, stored = read_split(archive)
    assert stored == record
    counts = {name: int((codes == code).sum()) for name, code in SPLIT_CODES.items()}
    assert record["counts"] == counts and sum(counts.values()) == N_LOCATIONS
    units = units_of(archive, by)
    largest = max(int((units == u).sum()) for u in set(units))
    assert largest < 0.1 * N_LOCATIONS  # many small units: the one-unit bound applies
    targets = {"train": (1 - val - test) * N_LOCATIONS, "val": val * N_LOCATIONS, "test": test * N_LOCATIONS}
    for name, target in targets.items():
        assert abs(counts[name] - target) <= largest, (name, counts, targets, largest)
    for name in ("val", "test"):  # the closer-to-target rule: within half of a unit
        assert abs(counts[name] - targets[name]) <= largest / 2, (name, counts, targets, largest)


def test_assignment_rule_on_known_units():
    """Test takes units while that brings it closer to its target, then val, train the rest."""
    keys = np.array(["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["d"] * 4 + ["e"] * 4, dtype=object)
    codes, units = assign_units(keys, val=0.1, test=0.3, seed=0)  # targets: test 6, val 2 of 20
    counts = {name: int((codes == code).sum()) for name, code in SPLIT_CODES.items()}
    assert counts == {"train": 12, "val": 4, "test": 4}  # test: 4 (+4 → 8 is as far from 6): stops
    assert units == {"train": 3, "val": 1, "test": 1}
    # A target too small for any unit still gets one unit; a zero target none; train keeps the last unit.
    codes, units = assign_units(keys, val=0.0, test=0.01, seed=0)
    assert units == {"train": 4, "val": 0, "test": 1}
    codes, units = assign_units(np.array(["a", "b"], dtype=object), val=0.45, test=0.45, seed=0)
    assert units == {"train": 1, "val": 0, "test": 1}


# ------------------------------------------------------------------------------------------- the seed
def test_same_seed_same_split_other_seed_other_split(archive):
    first = write_split(archive, by="city", seed=11)
    again = write_split(archive, by="city", seed=11)
    assert again["hash"] == first["hash"] and again["counts"] == first["counts"]
    other = write_split(archive, by="city", seed=12)
    assert other["hash"] != first["hash"]
    assert read_split(archive)[1]["hash"] == other["hash"] == codes_hash(read_split(archive)[0])


# ---------------------------------------------------------------------------------------- curation
def test_curated_archive_has_the_default_split(curated):
    found = read_split(curated)
    assert found is not None
    codes, record = found
    assert {k: record[k] for k in ("version", "by", "val", "test", "seed")} == \
        {"version": 1, "by": "city", "val": 0.1, "test": 0.2, "seed": 0}
    assert record["hash"] == codes_hash(codes) and len(codes) == 8
    g = open_group(curated)
    assert g["split"].chunks == g["status"].chunks and g["split"].dtype == np.uint8
    ds = open_archive(curated)
    assert ds["split"].dims == ("patch",) and ds["split"].dtype == np.uint8
    parts = [split_indices(curated, name) for name in ("train", "val", "test")]
    assert all(p.dtype == np.int64 and (np.diff(p) > 0).all() for p in parts)
    assert sorted(np.concatenate(parts).tolist()) == list(range(8))


def test_rerunning_prepare_keeps_an_existing_split(archive):
    custom = write_split(archive, by="grid", val=0.3, test=0.1, seed=5, grid_km=250)
    codes = open_group(archive)["split"][:]
    steps.prepare(manifest_for(Path(archive), N_LOCATIONS))
    assert read_split(archive) is not None
    assert read_split(archive)[1] == custom
    np.testing.assert_array_equal(open_group(archive)["split"][:], codes)
    assert ensure_split(archive) == custom


def test_interrupted_rewrite_leaves_no_split_and_ensure_split_completes_it(archive):
    """The record goes first and comes back last: array without record reads as no split."""
    g = open_group(archive, "r+")
    del g.attrs["split"]  # as if a rewrite died after removing the old record
    assert read_split(archive) is None
    with pytest.raises(ArchiveError, match="no train/val/test split.*softcon split"):
        split_indices(archive, "test")
    record = ensure_split(archive)
    assert record["by"] == "city" and read_split(archive)[1] == record


class SimulatedKill(Exception):
    """Stands for the process dying just before a store write."""


def test_a_rewrite_killed_at_any_write_never_leaves_a_mismatched_split(archive, tmp_path):
    """Old split intact, or no split (which ensure_split completes); never a record over other codes."""
    old = read_split(archive)[1]
    original = zarr.storage.LocalStore.set
    calls = {"n": 0}

    async def counting(self, key, value):
        calls["n"] += 1
        return await original(self, key, value)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zarr.storage.LocalStore, "set", counting)
        write_split(str(shutil.copytree(archive, tmp_path / "count.zarr")), by="grid", seed=9)
    assert calls["n"] >= 3  # record removed, array chunks, record
    for k in range(calls["n"]):
        store = str(shutil.copytree(archive, tmp_path / f"killed-{k}.zarr"))
        seen = {"n": 0}

        async def dying(self, key, value, seen=seen, k=k):
            if seen["n"] == k:
                raise SimulatedKill(key)
            seen["n"] += 1
            return await original(self, key, value)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(zarr.storage.LocalStore, "set", dying)
            with pytest.raises(SimulatedKill):
                write_split(store, by="grid", seed=9)
        found = read_split(store)  # never raises
        assert found is None or found[1] == old, f"write {k}"
        assert ensure_split(store)["hash"] == codes_hash(read_split(store)[0])


# ------------------------------------------------------------------------------------------ tampering
def test_tampered_split_array_is_detected(archive):
    codes, _ = read_split(archive)
    g = open_group(archive, "r+")
    changed = codes.copy()
    changed[0] = (changed[0] + 1) % 3
    g["split"][:] = changed
    with pytest.raises(ArchiveError, match="does not match its record"):
        read_split(archive)
    with pytest.raises(ArchiveError, match="does not match its record"):
        split_indices(archive, "test")
    with pytest.raises(ArchiveError):  # curation does not silently replace it either
        ensure_split(archive)
    res = run("inspect", archive, "--json")  # inspect still summarises, and names the problem
    assert res.exit_code == 0, res.output
    assert "does not match its record" in json.loads(res.output)["split"]["error"]


def test_record_without_array_is_detected(archive):
    g = open_group(archive, "r+")
    del g["split"]
    with pytest.raises(ArchiveError, match="no split array"):
        read_split(archive)


@pytest.mark.parametrize("kwargs, field", [
    ({"val": 0.5, "test": 0.5}, "val + test"),
    ({"val": -0.1}, "val=-0.1"),
    ({"test": 1.0}, "test=1.0"),
    ({"test": float("nan")}, "test=nan"),
    ({"by": "country"}, "by='country'"),
    ({"grid_km": 0}, "grid_km=0"),
    ({"seed": -1}, "seed=-1"),
])
def test_bad_arguments_are_bad_input(archive, kwargs, field):
    before = read_split(archive)[1]
    with pytest.raises(BadInput, match=field.replace("+", r"\+")):
        write_split(archive, **kwargs)
    assert read_split(archive)[1] == before


# ----------------------------------------------------------------------------------------------- CLI
def test_cli_split_rewrites_the_split(archive):
    res = run("split", archive, "--by", "grid", "--val", "0.2", "--test", "0.1", "--seed", "4", "--grid-km", "150")
    assert res.exit_code == 0, res.output
    _, record = read_split(archive)
    assert {k: record[k] for k in ("by", "val", "test", "seed", "grid_km")} == \
        {"by": "grid", "val": 0.2, "test": 0.1, "seed": 4, "grid_km": 150.0}
    text = " ".join(res.output.split())
    assert record["hash"] in text
    for name, n in record["counts"].items():
        assert f"{name} {n}" in text


@pytest.mark.parametrize("args, message", [
    (["--val", "0.5", "--test", "0.6"], "val + test must be < 1"),
    (["--val", "-0.1"], "val=-0.1"),
    (["--by", "country"], "by='country'"),
])
def test_cli_split_bad_arguments_are_one_line_exit_2(archive, args, message):
    before = read_split(archive)[1]
    res = run("split", archive, *args)
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: split ") and message in lines[0], lines
    assert read_split(archive)[1] == before


def test_cli_split_missing_archive_is_bad_input(tmp_path):
    store = str(tmp_path / "nothing.zarr")
    res = run("split", store)
    assert res.exit_code == 2, res.output
    assert res.output.strip().startswith(f"error: {store}: no softcon archive there")


def test_cli_split_help_has_an_example():
    res = run("split", "--help")
    assert res.exit_code == 0, res.output
    assert "Example: softcon split " in res.output


def test_inspect_shows_the_split(curated):
    record = read_split(curated)[1]
    res = run("inspect", curated)
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "split: by city, seed 0" in text
    assert f"train {record['counts']['train']}" in text and f"test {record['counts']['test']}" in text
    assert record["hash"][:16] in text
    res = run("inspect", curated, "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["split"] == record


def test_inspect_shows_label_provenance_when_the_summary_has_it(curated, monkeypatch):
    import pipeline.archive

    original = pipeline.archive.summarize
    monkeypatch.setattr(pipeline.archive, "summarize",
                        lambda *a, **k: original(*a, **k) | {"label_provenance": {"dynamic_world": 8}})
    res = run("inspect", curated)
    assert res.exit_code == 0, res.output
    assert "label provenance: dynamic_world 8" in " ".join(res.output.split())
