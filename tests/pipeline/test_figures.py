"""Label statistics on hand-made arrays, and every figure of `softcon plot labels|run` rendered from a
small archive and a tiny run: each PNG exists, is not empty and has the size of its figure.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from archive_helpers import synthetic_archive
from PIL import Image
from run_helpers import tiny_run
from typer.testing import CliRunner

from flows.cli import app
from pipeline.figures import LABEL_FIGURES, find_patches, load_label_table, percentile_stretch, published_comparison
from pipeline.figures import label_stats as ls

DPI = 50


@pytest.fixture(scope="module")
def archive(small_archive):
    return small_archive(n_locations=12, size_px=32, patches_per_shard=4, cloud_probability=0.3)


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


# ------------------------------------------------------------------------------------------- statistics
def test_cooccurrence_lift_and_pmi_by_hand():
    # 4 labelled images (one unlabelled row is ignored): classes a, b always together, c alone.
    mh = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1], [0, 0, 1], [0, 0, 0]])
    c = ls.cooccurrence(mh)
    assert c["n_labelled"] == 4
    assert c["counts"].tolist() == [[2, 2, 0], [2, 2, 0], [0, 0, 2]]
    assert c["conditional"][0, 1] == 1.0
    assert c["lift"][0, 1] == pytest.approx(2 * 4 / (2 * 2))  # P(a,b) / (P(a) P(b)) = 0.5 / 0.25
    assert c["pmi"][0, 1] == pytest.approx(1.0)
    assert c["pmi"][0, 2] == -np.inf  # never together


def test_season_changes_follow_dates_and_skip_unlabelled_seasons():
    # one location, seasons stored out of date order: dates 2021-03, 2021-06, 2020-12, 2021-09
    order = np.argsort(np.array(["2021-03-20", "2021-06-21", "2020-12-21", "2021-09-22"]))
    mh = np.zeros((2, 4, 2), np.uint8)
    frac = np.zeros((2, 4, 2), np.float32)
    # location 0 in date order: {0}, {0,1}, unlabelled, {1}
    for s, (vec, f) in {2: ([1, 0], [1, 0]), 0: ([1, 1], [0.6, 0.4]), 3: ([0, 1], [0, 1])}.items():
        mh[0, s], frac[0, s] = vec, f
    mh[1, :] = [1, 0]  # location 1 never changes
    frac[1, :] = [1, 0]
    s = ls.season_changes(mh, frac, order)
    assert s["n_locations"] == 2 and s["changing_share"] == 0.5
    assert s["n_pairs"] == 2 + 3
    assert s["gains"].tolist() == [0, 1] and s["losses"].tolist() == [1, 0]
    assert s["dominant_transitions"][0, 1] == 1 and s["dominant_transitions"][0, 0] == 1 + 3
    assert s["always_present"].tolist() == [0.5, 0.0]


def test_threshold_sweep_latitude_bands_and_agreement():
    frac = np.array([[0.5, 0.5, 0.0], [0.95, 0.04, 0.01], [0.0, 0.0, 0.0]])
    sw = ls.threshold_sweep(frac, [0.0, 0.02, 0.2])
    assert sw["n_images"] == 2
    assert sw["frequency"][:, 1].tolist() == [1.0, 1.0, 0.5]
    assert sw["mean_labels"].tolist() == [2.5, 2.0, 1.5]
    b = ls.latitude_bands(np.array([-80.0, 10.0, 12.0]), np.array([[[1, 0]], [[0, 1]], [[0, 0]]]), width_deg=30)
    assert len(b["n_locations"]) == 6 and b["n_locations"].tolist() == [1, 0, 0, 2, 0, 0]
    assert b["n_labelled"].tolist() == [1, 0, 0, 1, 0, 0]
    assert b["frequency"][3].tolist() == [0.0, 1.0] and np.isnan(b["frequency"][1]).all()
    a = ls.agreement(np.array([[1, 0], [1, 1]]), np.array([[1, 1], [0, 1]]))
    assert a["precision"].tolist() == [1.0, 0.5] and a["recall"].tolist() == [0.5, 1.0] and a["exact"] == 0.0


def test_percentile_stretch_is_not_dark_and_ignores_clouds():
    rng = np.random.default_rng(0)
    scene = rng.uniform(300, 700, (32, 32))  # a dark scene
    scene[:4] = 6000  # a bright cloud on 12 % of it
    clear = np.ones_like(scene, bool)
    clear[:4] = False
    out = percentile_stretch(scene, reference=clear)
    assert 0.4 < np.median(out[4:]) < 0.6  # the clear part spans the range
    assert (out[:4] == 1.0).all()
    assert np.median(percentile_stretch(scene)[4:]) < 0.1  # what the cloud does to a plain stretch


def test_find_patches(archive):
    table = load_label_table(archive, nodata=False)
    mh = table.multi_hot.astype(bool)
    w, b = table.class_index("water"), table.class_index("built")
    expect = table.patch_index[(mh[..., w] & ~mh[..., b]).any(axis=1)]
    assert find_patches(table, with_labels=["water"], without=["built"]).tolist() == expect.tolist()
    every = find_patches(table, with_labels=["water"], all_seasons=True)
    assert set(every) <= set(find_patches(table, with_labels=["water"]))
    from pipeline.errors import BadInput

    with pytest.raises(BadInput, match="'forest'"):
        find_patches(table, with_labels=["forest"])


def test_published_labels_against_own(tmp_path):
    store = synthetic_archive(tmp_path / "p.zarr", n_locations=6, size_px=32, patches_per_shard=3)
    table = load_label_table(store, nodata=False)
    with pytest.raises(ValueError, match="no published"):
        published_comparison(table)
    # publish the archive's own vectors except: water never listed, bare always listed
    w, bare = table.class_index("water"), table.class_index("bare")
    data: dict[str, dict[str, list[str]]] = {}
    for p, loc in enumerate(table.patch_id):
        for s, image in enumerate(table.s2_image_id[p]):
            vec = table.multi_hot[p, s].copy()
            vec[w], vec[bare] = 0, 1
            data.setdefault(str(loc), {})[str(image)] = [str(k) for k in np.flatnonzero(vec)]
    path = tmp_path / "published.json"
    path.write_text(json.dumps(data))
    assert cli("import-labels", str(path), store).exit_code == 0
    table = load_label_table(store, nodata=False)
    cmp = published_comparison(table, path)
    own = table.fraction > table.own_thresholds["presence_threshold"]
    assert cmp["n"] == int(table.labelled.size)
    assert own[..., w].any() and own[..., bare].any()  # the synthetic world has water and bare land
    assert np.isnan(cmp["recall"][w]) and cmp["precision"][w] == 0.0  # never published
    assert cmp["precision"][bare] == 1.0  # always published
    assert cmp["recall"][bare] == pytest.approx(own[..., bare].mean())
    others = [k for k in range(len(table.classes)) if k not in (w, bare) and own[..., k].any()]
    assert all(cmp["precision"][k] == 1.0 and cmp["recall"][k] == 1.0 for k in others)
    out = tmp_path / "figs"
    result = cli("plot", "labels", store, "--out", str(out), "--dpi", str(DPI), "--published", str(path))
    assert result.exit_code == 0, result.output
    assert (out / "published_agreement.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------- the CLI
def test_plot_labels_writes_every_figure(archive, tmp_path):
    out = tmp_path / "labels"
    result = cli("plot", "labels", archive, "--out", str(out), "--dpi", str(DPI))
    assert result.exit_code == 0, result.output
    assert "published_agreement: skipped" in result.output
    table = load_label_table(archive)
    for name, build in LABEL_FIGURES.items():
        path = out / f"{name}.png"
        w, h = build(table).get_size_inches() * DPI
        assert path.stat().st_size > 2000, name
        assert png_size(path) == (round(w), round(h)), name
    assert png_size(out / "class_frequencies.png") == (550, 210)  # 11 × 4.2 inches at 50 dpi
    for name in ("gallery", "patch_seasons"):
        assert (out / f"{name}.png").stat().st_size > 2000, name
        w, h = png_size(out / f"{name}.png")
        assert w > 200 and h > 200, name


def test_plot_run_writes_every_figure(archive, tmp_path):
    run = tiny_run(archive, tmp_path / "run")
    out = tmp_path / "figs"
    result = cli("plot", "run", str(run), "--out", str(out), "--dpi", str(DPI), "--max-items", "40")
    assert result.exit_code == 0, result.output
    sizes = {"curves": (4.2 * 3 + 0.6, 3.8), "embedding": (9, 6), "similarity": (8, 5.2)}
    for name, (w, h) in sizes.items():
        assert (out / f"{name}.png").stat().st_size > 2000, name
        assert png_size(out / f"{name}.png") == (round(w * DPI), round(h * DPI)), name
    assert (out / "neighbours.png").stat().st_size > 2000


@pytest.mark.parametrize("args, needle", [
    (["plot", "labels", "{missing}", "--out", "{out}"], "{missing}: no softcon archive there"),
    (["plot", "run", "{missing}", "--out", "{out}"], "{missing}: not a run folder"),
    (["plot", "labels", "{archive}", "--out", "{file}"], "--out {file}: exists and is not a folder"),
])
def test_bad_paths_exit_2_with_one_line(archive, tmp_path, args, needle):
    (tmp_path / "file.txt").write_text("x")
    values = {"missing": str(tmp_path / "nothere"), "out": str(tmp_path / "o"), "archive": archive,
              "file": str(tmp_path / "file.txt")}
    result = cli(*[a.format(**values) for a in args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and needle.format(**values) in lines[0], result.output
