"""Dynamic World class probabilities as a label product: the manifest switch, the synthetic noise model,
Earth Engine's probability bands (offline), the archive variable and its refusal for other sources.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import yaml
import zarr
from typer.testing import CliRunner

from pipeline.bands import DW_CLASSES, LABEL_NODATA
from pipeline.errors import BadInput
from pipeline.locations import Location
from pipeline.manifest import EarthEngineSourceOptions, Manifest, parse_manifest
from pipeline.preflight import preflight
from pipeline.reference import DW_PROBABILITY, mean_class_probability, season_products
from pipeline.seasons import SeasonWindow
from pipeline.sources.base import SeasonSample
from pipeline.sources.synthetic.probability import mean_probability, probability_map
from pipeline.sources.synthetic.rendering import dw_labels
from pipeline.store import STATUS_DONE, summarize
from tests.archive_helpers import curate_all

K = len(DW_CLASSES)


def blocks(size: int = 24, seed: int = 0) -> np.ndarray:
    """A land cover of 4 × 4 px blocks of random classes (many boundaries, some interior pixels)."""
    r = np.random.default_rng(seed)
    return np.kron(r.integers(0, K, (size // 4, size // 4)), np.ones((4, 4), int)).astype(np.uint8)


# ------------------------------------------------------------------------------------------ the manifest
def test_switch_is_off_by_default_and_hashed_only_when_on():
    off = Manifest()
    assert off.labels.dw_probabilities is False
    assert "dw_probabilities" not in off.public_dump()["labels"]  # archives made before it keep their hash
    assert off.content_hash() == Manifest(labels={"dw_probabilities": False}).content_hash()
    on = Manifest(labels={"dw_probabilities": True})
    assert on.content_hash() != off.content_hash()
    assert Manifest.model_validate(on.public_dump()).labels.dw_probabilities is True
    with pytest.raises(BadInput, match="labels.dw_probabilities"):
        parse_manifest({"labels": {"dw_probabilities": "yes"}})


@pytest.mark.parametrize("kind", ["local", "stac"])
def test_other_sources_refuse_the_switch_at_validate_time(tmp_path, kind):
    from flows.cli import app

    source = {"kind": kind, **({"local": {"root": str(tmp_path)}} if kind == "local" else {})}
    data = {"source": source, "labels": {"dw_probabilities": True}, "store": {"path": str(tmp_path / "a.zarr")}}
    lines = [p for p in preflight(Manifest.model_validate(data)) if p.startswith("labels.")]
    assert len(lines) == 1 and lines[0].startswith("labels.dw_probabilities: source.kind " + kind)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "labels.dw_probabilities" in result.output
    data["source"], data["labels"]["dw_probabilities"] = {"kind": "synthetic"}, True
    assert not [p for p in preflight(Manifest.model_validate(data)) if p.startswith("labels.")]


# ------------------------------------------------------------------------------------------ synthetic model
def test_probability_map_is_the_label_noise_posterior():
    """Frequencies of each label over many noise draws match the per-pixel probabilities (all directions)."""
    lc, noise, draws = blocks(), 0.4, 3000
    probs = probability_map(noise, lc)
    assert probs.shape == (K,) + lc.shape and np.allclose(probs.sum(0), 1) and probs.min() >= 0
    window = SeasonWindow(season=0, reference=dt.date(2021, 6, 1), start=dt.date(2021, 5, 17), end=dt.date(2021, 6, 16))
    loc = Location(index=3, lon=0.0, lat=0.0, epsg=32631, x=0.0, y=0.0)
    counts = np.zeros_like(probs)
    cloudless = np.zeros(lc.shape, bool)
    for seed in range(draws):
        lab = dw_labels(seed, noise, loc, window, lc, cloudless)
        counts[lab, np.arange(lc.shape[0])[:, None], np.arange(lc.shape[1])[None]] += 1
    assert np.abs(counts / draws - probs).max() < 0.05  # 5.5 σ of the worst binomial cell
    # interior pixels are certain; boundary pixels keep 1 − noise on their true class
    truth = probs[lc, np.arange(lc.shape[0])[:, None], np.arange(lc.shape[1])[None]]
    assert set(np.round(np.unique(truth), 9)) == {1.0, 0.6}


def test_argmax_agrees_with_the_label_where_it_is_not_noise():
    lc = blocks(seed=1)
    loc = Location(index=0, lon=0.0, lat=0.0, epsg=32631, x=0.0, y=0.0)
    window = SeasonWindow(season=1, reference=dt.date(2021, 6, 1), start=dt.date(2021, 5, 17), end=dt.date(2021, 6, 16))
    clouds = np.zeros(lc.shape, bool)
    clouds[:5] = True
    lab = dw_labels(7, 0.3, loc, window, lc, clouds)
    kept = (lab == lc)
    assert kept.sum() > 300 and ((lab != lc) & (lab != LABEL_NODATA)).any()  # both cases occur
    assert (probability_map(0.3, lc).argmax(0)[kept] == lab[kept]).all()
    mean = mean_probability(0.3, lc, lab)
    assert np.allclose(mean, probability_map(0.3, lc)[:, lab != LABEL_NODATA].mean(1))
    assert (mean_probability(0.3, lc, np.full(lc.shape, LABEL_NODATA, np.uint8)) == 0).all()


def test_mean_and_rows_helpers():
    p = np.stack([np.full((2, 2), 0.25), np.full((2, 2), 0.75)])
    p[:, 0, 0] = -1.0  # no probability there
    label = np.array([[0, 1], [LABEL_NODATA, 1]], np.uint8)
    assert np.allclose(mean_class_probability(p, label), [0.25, 0.75])  # only the 2 pixels with both
    assert (mean_class_probability(p, np.full((2, 2), LABEL_NODATA)) == 0).all()
    row = np.linspace(0, 1, K)
    samples = [SeasonSample({}, None, dw_probability=np.zeros(K)), SeasonSample({}, None, dw_probability=row)]
    out = season_products(samples)
    assert list(out) == [DW_PROBABILITY] and out[DW_PROBABILITY].tolist() == [[0.0] * K, row.tolist()]
    assert season_products([SeasonSample({}, None)] * 2) == {}  # a source without the product
    with pytest.raises(RuntimeError, match=r"no row for season\(s\) \[1\]"):
        season_products([samples[1], SeasonSample({}, None)])


# ------------------------------------------------------------------------------------------ the archive
def _manifest(path, on: bool, label_noise: float = 0.05) -> Manifest:
    return Manifest.model_validate({
        "source": {"kind": "synthetic", "synthetic": {"seed": 3, "label_noise": label_noise}},
        "sampling": {"n_locations": 4, "top_n_cities": 20, "seed": 1},
        "patch": {"size_px": 24}, "labels": {"dw_probabilities": on},
        "store": {"path": str(path), "patches_per_shard": 2}})


def test_synthetic_archive_with_and_without_the_product(tmp_path):
    on = curate_all(_manifest(tmp_path / "on.zarr", True))
    off = curate_all(_manifest(tmp_path / "off.zarr", False))
    assert DW_PROBABILITY not in off and "dw_probabilities" not in json.dumps(off.attrs["manifest"])
    assert DW_PROBABILITY not in off.attrs["source"]["label_products"]
    # everything else is the same archive, byte for byte
    for name in off.array_keys():
        a, b = off[name][:], on[name][:]
        same = a.tobytes() == b.tobytes() if a.dtype.kind in "biuf" else a.tolist() == b.tolist()
        assert a.dtype == b.dtype and same, name
    prob = on[DW_PROBABILITY][:]
    assert tuple(on[DW_PROBABILITY].metadata.dimension_names) == ("patch", "season", "class")
    assert prob.dtype == np.float32 and prob.shape == on["label_fraction"].shape and not np.isnan(prob).any()
    assert list(on[DW_PROBABILITY].attrs["classes"]) == list(DW_CLASSES)
    labelled = (on["dw_label"][:] != LABEL_NODATA).any(axis=(-2, -1))
    assert np.allclose(prob[labelled].sum(-1), 1, atol=1e-5) and (prob[~labelled] == 0).all()
    # the mean probability is the expected label fraction: close to the observed one, same dominant class
    frac = on["label_fraction"][:]
    ok = frac.any(-1)
    assert np.abs(prob[ok] - frac[ok]).max() < 0.05
    assert summarize(str(tmp_path / "on.zarr"))["label_products"][DW_PROBABILITY] == {
        "kind": "probability", "variables": [DW_PROBABILITY], "classes": K}
    assert DW_PROBABILITY not in summarize(str(tmp_path / "off.zarr"))["label_products"]


def test_noise_free_labels_give_the_label_fractions(tmp_path):
    group = curate_all(_manifest(tmp_path / "a.zarr", True, label_noise=0.0))
    frac, prob = group["label_fraction"][:], group[DW_PROBABILITY][:]
    ok = frac.any(-1)
    assert ok.sum() >= 8 and np.allclose(prob[ok], frac[ok], atol=1e-6)


# ------------------------------------------------------------------------------------------ Earth Engine
L1C_ID = "20210318T101021_20210318T101022_T32UPU"


def _fake_dw(size: int):
    """The label map and probability bands the fake serves: masked probabilities where there is no label,
    plus one labelled pixel without probabilities (left out of the mean).
    """
    r, c = np.mgrid[0:size, 0:size]
    label = ((r // 5 + c // 7) % K).astype(np.uint8)
    label[r == c] = LABEL_NODATA
    logits = np.stack([np.sin(0.3 * (k + 1) * r + 0.2 * c) for k in range(K)])
    prob = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
    prob[:, label == LABEL_NODATA] = -1.0
    prob[:, 0, 1] = -1.0
    return label, prob


class DWTransport:
    """Earth Engine answers for one S2 L1C band and Dynamic World (label and probability bands)."""

    def __init__(self, size: int, dw: dict):
        self.size, self.meta = size, {
            "s2_l1c": {"count": 1, "ids": [L1C_ID], "times": [1616062800000], "CLOUDY_PIXEL_PERCENTAGE": [3.0]},
            "dw": dw}
        self.label, self.prob = _fake_dw(size)
        self.requests: list[dict] = []

    def get_info(self, computation, tag):
        return json.loads(json.dumps(self.meta[tag]))

    def probability(self, request) -> np.ndarray:
        return self.prob

    def compute_pixels(self, request, tag):
        self.requests.append({"tag": tag, **request})
        bands, n = request["bandIds"], self.size
        if tag == "dw":
            values = {"label": self.label}
        elif tag == "dw_probability":
            values = dict(zip(DW_CLASSES, self.probability(request)))
        else:
            values = {b: np.full((n, n), 1000, np.uint16) for b in bands}
        out = np.zeros((n, n), dtype=[(b, values[b].dtype) for b in bands])
        for b in bands:
            out[b] = values[b]
        return out


@pytest.mark.parametrize("dw, method", [({"matched": 1, "window": 3}, "matched"),
                                        ({"matched": 0, "window": 3}, "mode"),
                                        ({"matched": 0, "window": 0}, None)])
def test_earth_engine_requests_the_probability_bands_of_the_label_image(ee_offline, dw, method):
    from ee_fakes import GRID, LOC, WINDOW, calls, graph

    from pipeline.sources.earthengine import EarthEngineSource

    fake = DWTransport(GRID.size, dw)
    src = EarthEngineSource(EarthEngineSourceOptions(requests_per_second=1e6), 20.0, transport=fake,
                            sleep=lambda s: None, dw_probabilities=True)
    assert src.describe()["label_products"][DW_PROBABILITY]["classes"] == list(DW_CLASSES)
    sample = src.fetch(LOC, WINDOW, GRID, {"s2_l1c": ("B4",)})
    row = sample.dw_probability
    asked = [r for r in fake.requests if r["tag"] == "dw_probability"]
    if method is None:  # no Dynamic World image: no label map, no probability request, zeros
        assert sample.label is None and not asked and (row == 0).all()
        return
    assert sample.label.method == method
    (req,) = asked
    label_req = next(r for r in fake.requests if r["tag"] == "dw")
    assert req["bandIds"] == list(DW_CLASSES) and req["grid"] == label_req["grid"]
    tree = graph(req["expression"])
    assert {c["id"] for c in calls(tree, "ImageCollection.load")} == {"GOOGLE/DYNAMICWORLD/V1"}
    assert calls(tree, "Image.unmask")[0]["value"]["value"] == -1.0
    if method == "matched":  # the same image as the label: the DW image named like the L1C one
        assert calls(tree, "Filter.equals")[0]["rightValue"] == L1C_ID and not calls(tree, "reduce.mean")
    else:
        assert calls(tree, "reduce.mean") and not calls(tree, "Filter.equals")
    valid = (fake.label != LABEL_NODATA) & (fake.prob >= 0).all(0)
    expected = fake.prob[:, valid].astype(np.float64).mean(1)
    assert row.shape == (K,) and np.allclose(row, expected, atol=1e-7)


def test_earth_engine_without_the_switch_asks_nothing_more(ee_offline):
    from ee_fakes import GRID, LOC, WINDOW

    from pipeline.sources.earthengine import EarthEngineSource

    fake = DWTransport(GRID.size, {"matched": 1, "window": 3})
    src = EarthEngineSource(EarthEngineSourceOptions(requests_per_second=1e6), 20.0, transport=fake,
                            sleep=lambda s: None)
    sample = src.fetch(LOC, WINDOW, GRID, {"s2_l1c": ("B4",)})
    assert [r["tag"] for r in fake.requests] == ["s2_l1c", "dw"]
    assert "label_products" not in src.describe() and sample.dw_probability is None


class SeasonalDWTransport(DWTransport):
    """:class:`DWTransport` whose probability bands differ by season (classes rolled by the window start's
    ordinal) and come back after a random delay, so that concurrent seasons answer out of order.
    """

    def __init__(self, size: int):
        super().__init__(size, {"matched": 0, "window": 3})  # "mode": the probability request names its window
        self._rng = np.random.default_rng(0)

    def rolled(self, start: str) -> np.ndarray:
        return np.roll(self.prob, dt.date.fromisoformat(start[:10]).toordinal() % K, axis=0)

    def probability(self, request) -> np.ndarray:
        from ee_fakes import calls, graph

        time.sleep(0.02 * self._rng.random())
        return self.rolled(calls(graph(request["expression"]), "DateRange")[0]["start"])


def test_seasons_fetched_concurrently_keep_their_own_rows(ee_offline, tmp_path):
    """The Earth Engine source fetches a patch's seasons on threads: each season's row travels with its own
    sample into the patch's ``dw_probability``, in season order, the same as fetching one after another.
    """
    from ee_fakes import GRID, LOC

    from pipeline.curate import process_patch, start_patch
    from pipeline.sources.earthengine import EarthEngineSource

    manifest = Manifest.model_validate({
        "source": {"kind": "earthengine", "earthengine": {"project": "offline-test", "requests_per_second": 1e6}},
        "modalities": {"s2_l1c": {"bands": ["B4"]}, "s2_l2a": {"enabled": False}, "s1_grd": {"enabled": False}},
        "patch": {"size_px": GRID.size}, "labels": {"dw_probabilities": True},
        "store": {"path": str(tmp_path / "a.zarr")}})
    results = []
    for pool in (None, ThreadPoolExecutor(4)):
        fake = SeasonalDWTransport(GRID.size)
        src = EarthEngineSource(manifest.source.earthengine, 20.0, transport=fake, sleep=lambda s: None,
                                dw_probabilities=True)
        results.append(process_patch(src, manifest, LOC, pool=pool))
    windows = start_patch(src, manifest, LOC).windows  # (no pool: nothing is fetched)
    valid = (fake.label != LABEL_NODATA) & (fake.prob >= 0).all(0)
    expected = np.stack([fake.rolled(w.start.isoformat())[:, valid].astype(np.float64).mean(1) for w in windows])
    assert len({row.argmax() for row in expected}) > 1  # the seasons' rows differ
    for result in results:
        assert result.status == STATUS_DONE, result.reason
        prob = result.products[DW_PROBABILITY]
        assert prob.dtype == np.float32 and np.allclose(prob, expected, atol=1e-6)
    assert results[0].products[DW_PROBABILITY].tobytes() == results[1].products[DW_PROBABILITY].tobytes()


def test_probabilities_above_one_are_corrupt(ee_offline):
    from ee_fakes import GRID, LOC, WINDOW

    from pipeline.sources.base import CorruptData
    from pipeline.sources.earthengine import EarthEngineSource

    fake = DWTransport(GRID.size, {"matched": 1, "window": 3})
    fake.prob[2, 3, 3] = 7.0
    src = EarthEngineSource(EarthEngineSourceOptions(requests_per_second=1e6), 20.0, transport=fake,
                            sleep=lambda s: None, dw_probabilities=True)
    with pytest.raises(CorruptData, match="probabilities above 1"):
        src.fetch(LOC, WINDOW, GRID, {"s2_l1c": ("B4",)})


def test_inspect_shows_the_product(tmp_path):
    from flows.cli import app

    curate_all(_manifest(tmp_path / "a.zarr", True))
    out = CliRunner().invoke(app, ["inspect", str(tmp_path / "a.zarr")])
    assert out.exit_code == 0, out.output
    assert "dw_probability (probability, 9 classes)" in " ".join(out.output.split())
    out = CliRunner().invoke(app, ["inspect", str(tmp_path / "a.zarr"), "--json"])
    assert json.loads(out.output)["label_products"][DW_PROBABILITY]["kind"] == "probability"
    assert zarr.open_group(str(tmp_path / "a.zarr"), mode="r")[DW_PROBABILITY].shape[-1] == K
