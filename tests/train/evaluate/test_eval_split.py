"""Evaluation on the archive uses the archive's own train/val/test split, and refuses checkpoints that
were trained on its test patches (issue 11, evaluation side).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from flows.cli import app
from pipeline.errors import BadInput
from train.evaluate.run import build_splits, evaluate
from train.evaluate.tasks import ArchiveTask, item_groups

FAILED = 1  # a train location marked failed: it must not become an item


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> str:
    from archive_helpers import synthetic_archive

    from pipeline.split import split_indices, write_split
    from pipeline.store import STATUS_DONE, STATUS_FAILED, open_group

    path = synthetic_archive(tmp_path_factory.mktemp("eval-split") / "a.zarr", n_locations=12, size_px=16,
                             patches_per_shard=6)
    write_split(path, val=0.15, test=0.3, seed=0)
    group = open_group(path, "r+")
    assert (group["status"][:] == STATUS_DONE).all() and group["multi_hot"][:].any(-1).all()
    assert FAILED in split_indices(path, "train")
    status = group["status"][:]
    status[FAILED] = STATUS_FAILED
    group["status"][:] = status
    return path


def _patch_ids(path: str) -> np.ndarray:
    from pipeline.store import open_group

    return np.asarray([str(x) for x in open_group(path)["patch_id"][:]])


def _manifest_hash(path: str) -> str:
    from pipeline.store import open_group

    return open_group(path).attrs["manifest_hash"]


def _weights(path, record: dict | None) -> str:
    """A softcon-backbone file (random resnet18, 13 bands) with an optional training-data record."""
    from safetensors.torch import save_file

    from train.models import build_backbone

    model, _ = build_backbone("resnet18", 13)
    meta = {"format": "softcon-backbone", "backbone": "resnet18", "modality": "s2_l1c"}
    if record is not None:
        meta["training_data"] = json.dumps(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    return str(path)


def _record(archive: str, patch_ids, manifest_hash: str | None = None) -> dict:
    ids = sorted(str(i) for i in patch_ids)
    return {"archive": archive, "archive_manifest_hash": manifest_hash or _manifest_hash(archive),
            "splits": ["train"], "split_record": None, "n_patches": len(ids), "patch_ids": ids}


# ------------------------------------------------------------------------------------------ the split
def test_archive_task_items_follow_the_archive_split(archive):
    from pipeline.split import split_indices

    tasks = {}
    for name in ("train", "val", "test"):
        expected = [int(p) for p in split_indices(archive, name) if p != FAILED]
        task = ArchiveTask(archive, split=name)
        tasks[name] = task
        assert task.locations.tolist() == expected and len(expected) > 0, name
        assert task._items == [(p, s) for p in expected for s in range(4)], name  # every season, one side
        np.testing.assert_array_equal(task.groups, [p for p, _ in task._items])
        np.testing.assert_array_equal(item_groups(task), task.groups)
    train, val, test, desc = build_splits("archive", {"store": archive}, with_val=True)
    assert (train.ids, val.ids, test.ids) == (tasks["train"].ids, tasks["val"].ids, tasks["test"].ids)
    assert "archive's split by city" in desc
    train3, test3, _ = build_splits("archive", {"store": archive})  # the 3-tuple form is unchanged
    assert train3.ids == train.ids and test3.ids == test.ids
    sub, _, _ = build_splits("archive", {"store": archive}, fraction=0.5, seed=1)  # groups follow a Subset
    np.testing.assert_array_equal(item_groups(sub), train.groups[np.asarray(sub.indices)])
    for key, value in (("seed", 3), ("test_fraction", 0.5)):  # options of the old, private split
        with pytest.raises(BadInput, match=key):
            build_splits("archive", {"store": archive, key: value})


def test_independent_items_are_their_own_groups(shared_data):
    from train.evaluate.tasks import EuroSAT

    task = EuroSAT(shared_data / "eurosat")
    np.testing.assert_array_equal(item_groups(task), np.arange(len(task)))
    _, test, _ = build_splits("eurosat", {"root": shared_data / "eurosat"}, seed=0)
    np.testing.assert_array_equal(item_groups(test), np.asarray(test.indices))


def test_archive_without_split_is_refused(archive, tmp_path):
    from pipeline.store import open_group

    bare = str(tmp_path / "bare.zarr")
    shutil.copytree(archive, bare)
    del open_group(bare, "r+").attrs["split"]
    with pytest.raises(BadInput, match=r"bare\.zarr.*softcon split .*bare\.zarr"):
        ArchiveTask(bare, split="test")
    res = CliRunner().invoke(app, ["evaluate", "pixels", "--task", "archive", "--opt", f"store={bare}",
                                   "--out", str(tmp_path / "out"), "--device", "cpu", "--no-baselines"])
    assert res.exit_code == 2, res.output
    assert "softcon split" in res.output and "bare.zarr" in res.output


# ------------------------------------------------------------------------------------------ overlap
def test_overlap_refused_and_allowed_through_the_cli(archive, tmp_path, monkeypatch):
    from pipeline.split import split_indices

    monkeypatch.chdir(tmp_path)  # the default feature cache lands in tmp_path
    ids = _patch_ids(archive)
    trained = list(ids[split_indices(archive, "train")]) + list(ids[split_indices(archive, "test")[:3]])
    run = tmp_path / "run-overlap"
    _weights(run / "backbone.safetensors", None)  # the run folder's JSON is the record here
    (run / "training_data.json").write_text(json.dumps(_record(archive, trained)))
    args = ["evaluate", str(run), "--task", "archive", "--opt", f"store={archive}", "--protocol", "knn",
            "--device", "cpu", "--no-baselines"]

    refused = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "refused")])
    assert refused.exit_code == 2, refused.output
    lines = [line for line in refused.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "run-overlap" in lines[0] and f"3 of its {len(trained)} training patches are in the test split" in lines[0]
    assert not (tmp_path / "refused" / "results.json").exists()

    allowed = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "allowed"), "--allow-overlap"])
    assert allowed.exit_code == 0, allowed.output
    results = json.loads((tmp_path / "allowed" / "results.json").read_text())
    assert results["allow_overlap"] is True
    assert results["overlap"] == {"run-overlap": {"checkpoint": str(run / "backbone.safetensors"),
                                                  "n_test_overlap": 3, "n_patches": len(trained)}}
    assert results["checkpoints"]["run-overlap"]["training_data"]["status"] == "recorded"
    md = (tmp_path / "allowed" / "results.md").read_text()
    bold = [line for line in md.splitlines() if line.startswith("**") and line.endswith("**")]
    assert len(bold) == 1 and "`run-overlap`" in bold[0] and "3 patches of this test split" in bold[0]


def test_weights_file_record_unknown_and_other_archive(archive, tmp_path):
    from pipeline.split import split_indices

    ids = _patch_ids(archive)
    test_ids = ids[split_indices(archive, "test")]
    common = {"protocols": ("knn",), "device": "cpu", "baselines": False, "cache_dir": None,
              "knn_kwargs": {"k": 3}}

    # the record in the weight file's metadata (no run folder around it) is read and refused
    overlapping = _weights(tmp_path / "ext" / "overlap.safetensors", _record(archive, test_ids[:2]))
    with pytest.raises(BadInput, match=r"overlap\.safetensors: 2 of its 2 training patches are in the test split"):
        evaluate([overlapping], "archive", {"store": archive}, out_dir=tmp_path / "o", **common)

    # no record: evaluated, with the note
    unknown = _weights(tmp_path / "ext" / "external.safetensors", None)
    res = evaluate([unknown], "archive", {"store": archive}, out_dir=tmp_path / "u", **common)
    row = res["checkpoints"]["external"]
    assert row["training_data"]["status"] == "unknown" and res["overlap"] == {}
    assert any(n.startswith("training data unknown") for n in row["notes"])
    md = (tmp_path / "u" / "results.md").read_text()
    assert "`external`: training data unknown" in md and "**Warning" not in md

    # a record of another archive (other manifest hash) cannot overlap; train-only records pass silently
    other = _weights(tmp_path / "ext" / "other.safetensors",
                     _record("/elsewhere/b.zarr", test_ids, manifest_hash="0" * 64))
    clean = _weights(tmp_path / "ext" / "clean.safetensors", _record(archive, ids[split_indices(archive, "train")]))
    res = evaluate([other, clean], "archive", {"store": archive}, out_dir=tmp_path / "c", **common)
    assert res["overlap"] == {}
    assert res["checkpoints"]["other"]["training_data"]["status"] == "other_archive"
    assert res["checkpoints"]["clean"]["training_data"] == {
        "status": "recorded", "archive": archive, "n_patches": len(split_indices(archive, "train")),
        "n_test_overlap": 0}
    assert res["checkpoints"]["clean"]["notes"] == []
