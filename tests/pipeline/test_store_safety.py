"""Curation never writes over what is not its own, and a template write killed at any step is redone.

Issue 10, parts 1 and 3: a store path naming a folder of the user's files (or the manifest's own
folder) is refused with nothing changed; a run killed at each store write of the template leaves an
archive that readers do not accept and that the next run writes again.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr
import zarr.storage

from pipeline import curate as steps
from pipeline.manifest import Manifest
from pipeline.store import STATUS_TODO, ArchiveError, archive_exists, open_group
from pipeline.store_target import TEMPLATE_MARKER, ArchiveBusy, StoreRefused, archive_lock, target_state


def manifest_at(path, **over) -> Manifest:
    data = {
        "source": {"kind": "synthetic", "synthetic": {"seed": 1}},
        "sampling": {"n_locations": 5, "top_n_cities": 20, "seed": 3},
        "patch": {"size_px": 16},
        "store": {"path": str(path), "patches_per_shard": 2},
        "modalities": {"s2_l2a": {"enabled": False}},
    }
    data.update(over)
    return Manifest.model_validate(data)


def snapshot(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def user_folder(tmp_path):
    folder = tmp_path / "mydata"
    (folder / "sub").mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    (folder / "sub" / "image.tif").write_bytes(b"\x00\x01" * 100)
    return folder


def test_existing_user_folder_is_refused_and_left_intact(tmp_path):
    folder = user_folder(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(StoreRefused, match="mydata.*not an empty folder"):
        steps.prepare(manifest_at(folder))
    assert snapshot(tmp_path) == before  # nothing written beside it either (no locations file)


def test_manifest_folder_as_store_is_refused(tmp_path):
    (tmp_path / "data_manifest.yaml").write_text("name: x\n")
    before = snapshot(tmp_path)
    with pytest.raises(StoreRefused):
        steps.prepare(manifest_at(tmp_path))
    assert snapshot(tmp_path) == before


def test_regular_file_and_foreign_zarr_are_refused(tmp_path):
    file = tmp_path / "notes.zarr"
    file.write_text("a file, not a folder")
    with pytest.raises(StoreRefused):
        steps.prepare(manifest_at(file))
    assert file.read_text() == "a file, not a folder"
    foreign = tmp_path / "other.zarr"
    g = zarr.open_group(str(foreign), mode="w", zarr_format=3, attributes={"owner": "someone else"})
    g.create_array("x", shape=(3,), dtype="int8")
    before = snapshot(foreign)
    with pytest.raises(StoreRefused):
        steps.prepare(manifest_at(foreign))
    assert snapshot(foreign) == before


def test_users_file_named_like_the_locations_table_is_refused(tmp_path):
    store = tmp_path / "a.zarr"
    mine = tmp_path / "a.zarr.locations.parquet"
    pd.DataFrame({"field": [1, 2]}).to_parquet(mine)
    before = mine.read_bytes()
    with pytest.raises(StoreRefused, match="locations"):
        steps.prepare(manifest_at(store))
    assert mine.read_bytes() == before and not store.exists()


def test_empty_folder_becomes_the_archive(tmp_path):
    store = tmp_path / "empty"
    store.mkdir()
    locations, layout = steps.prepare(manifest_at(store))
    assert archive_exists(str(store)) and layout.n_patches == 5 == len(locations)


def test_other_manifest_archive_is_refused_both_complete_and_incomplete(tmp_path):
    store = tmp_path / "a.zarr"
    steps.prepare(manifest_at(store))
    other = manifest_at(store, sampling={"n_locations": 5, "top_n_cities": 20, "seed": 4})
    with pytest.raises(ArchiveError, match="different manifest"):
        steps.prepare(other)
    zarr.open_group(str(store), mode="r+").attrs[TEMPLATE_MARKER] = False
    with pytest.raises(ArchiveError, match="different manifest"):
        steps.prepare(other)
    assert target_state(str(store))[0] == "incomplete"


def test_archive_written_before_the_marker_existed_is_still_an_archive(tmp_path):
    store = tmp_path / "a.zarr"
    steps.prepare(manifest_at(store))
    g = zarr.open_group(str(store), mode="r+")
    del g.attrs[TEMPLATE_MARKER]
    assert archive_exists(str(store))


class SimulatedKill(Exception):
    """Stands for the process dying just before a store write."""


def count_template_writes(tmp_path) -> int:
    """Store writes of the template, up to and including the one that sets ``template_complete``.

    (``prepare`` writes the archive's split after that; its own kill-safety is tested in test_split.py.)
    """
    calls = {"n": 0, "template": None}
    original = zarr.storage.LocalStore.set

    async def counting(self, key, value):
        calls["n"] += 1
        if calls["template"] is None and key == "zarr.json" and b'"template_complete": true' in value.to_bytes():
            calls["template"] = calls["n"]
        return await original(self, key, value)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zarr.storage.LocalStore, "set", counting)
        steps.prepare(manifest_at(tmp_path / "count.zarr"))
    assert calls["template"] is not None
    return calls["template"]


def test_kill_at_every_template_write_then_rerun_gives_a_complete_archive(tmp_path):
    reference = tmp_path / "reference.zarr"
    steps.prepare(manifest_at(reference))
    ref = open_group(str(reference))
    ref_arrays = {k: ref[k][:] for k in ("patch_id", "city", "lon", "band_s2_l1c", "status", "reference_date")}
    n_writes = count_template_writes(tmp_path)
    assert n_writes > 20  # root, every array's metadata and the coordinates' chunks
    original = zarr.storage.LocalStore.set
    for k in range(n_writes):
        store = tmp_path / f"killed-{k}.zarr"
        calls = {"n": 0}

        async def dying(self, key, value):
            if calls["n"] == k:
                raise SimulatedKill(key)
            calls["n"] += 1
            return await original(self, key, value)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(zarr.storage.LocalStore, "set", dying)
            with pytest.raises(SimulatedKill):
                steps.prepare(manifest_at(store))
        # Whatever is on disk now is not an archive readers accept ...
        assert not archive_exists(str(store)), f"write {k}: a half-written template is accepted"
        # ... and the next run takes it up as its own and writes it whole.
        locations, layout = steps.prepare(manifest_at(store))
        g = open_group(str(store))
        assert g.attrs[TEMPLATE_MARKER] is True
        for name, values in ref_arrays.items():
            np.testing.assert_array_equal(g[name][:], values, err_msg=f"write {k}: {name}")
        assert (g["status"][:] == STATUS_TODO).all()
        assert set(g.array_keys()) == set(ref.array_keys())


def test_rerun_after_killed_template_curates(tmp_path):
    """The rewritten template takes shard writes and reads back like any archive."""
    store = tmp_path / "a.zarr"
    original = zarr.storage.LocalStore.set
    calls = {"n": 0}

    async def dying(self, key, value):
        calls["n"] += 1
        if calls["n"] == 8:
            raise SimulatedKill(key)
        return await original(self, key, value)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zarr.storage.LocalStore, "set", dying)
        with pytest.raises(SimulatedKill):
            steps.prepare(manifest_at(store))
    m = manifest_at(store)
    locations, layout = steps.prepare(m)
    for shard in steps.pending_shards(m, layout):
        steps.process_shard(m, layout, shard, locations[layout.shard_slice(shard)])
    g = open_group(str(store))
    assert (g["status"][:] != STATUS_TODO).all() and all(g["city"][:])


def test_second_run_on_a_locked_archive_is_told(tmp_path):
    store = str(tmp_path / "a.zarr")
    with archive_lock(store):
        with pytest.raises(ArchiveBusy, match="another curation run"):
            with archive_lock(store):
                pass
    with archive_lock(store):  # released when the first run ends
        pass
