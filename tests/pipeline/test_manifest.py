"""Manifest validation: defaults reproduce SSL4EO-S12, every bad key is named, the CLI exits 2."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from pipeline.bands import DW_CLASSES, S2_L1C_BANDS
from pipeline.manifest import Manifest, ManifestError, load_manifest, parse_manifest

REPO = Path(__file__).resolve().parents[2]


def test_defaults_reproduce_ssl4eo_s12():
    m = Manifest()
    assert m.sampling.sigma_km == 50.0 and m.sampling.min_distance_km == 1.98
    assert m.sampling.top_n_cities == 10_000 and m.sampling.n_locations == 251_079
    assert m.seasons.reference_dates == [dt.date(2021, 3, 20), dt.date(2021, 6, 21),
                                         dt.date(2021, 9, 22), dt.date(2020, 12, 21)]
    assert m.seasons.window_days == 30
    assert m.cloud_filter.max_cloudy_pixel_percentage == 20
    assert m.patch.size_px == 264 and m.patch.resolution_m == 10
    sel = m.modalities.selected()
    assert sel["s2_l1c"] == S2_L1C_BANDS and len(sel["s2_l2a"]) == 12 and sel["s1_grd"] == ("VV", "VH")
    assert list(m.labels.classes) == list(DW_CLASSES)


def test_repo_manifest_is_valid():
    m = load_manifest(REPO / "data_manifest.yaml")
    assert m.source.kind == "synthetic"
    assert Path(m.store.path).is_absolute()


@pytest.mark.parametrize(
    "patch, expected",
    [
        ({"sampling": {"sigma_km": -1}}, "sampling.sigma_km: Input should be greater than 0"),
        ({"sampling": {"sigmakm": 3}}, "sampling.sigmakm: unknown key"),
        ({"colour": "blue"}, "colour: unknown key"),
        ({"source": {"kind": "sentinelhub"}},
         "source.kind: Input should be 'synthetic', 'local', 'earthengine' or 'stac'"),
        ({"source": {"kind": "local"}}, "source: source.kind is 'local' but source.local (with root) is missing"),
        ({"modalities": {"s2_l2a": {"bands": ["B10"]}}}, "modalities: s2_l2a.bands: unknown band(s) ['B10']"),
        ({"cloud_filter": {"max_cloudy_pixel_percentage": 120}},
         "cloud_filter.max_cloudy_pixel_percentage: Input should be less than or equal to 100"),
        ({"labels": {"presence_threshold": 1.5}}, "labels.presence_threshold: Input should be less than 1"),
        ({"seasons": {"reference_dates": ["2021-13-01"]}}, "seasons.reference_dates.0:"),
        ({"store": {"patches_per_shard": 0}}, "store.patches_per_shard: Input should be greater than 0"),
    ],
)
def test_each_problem_names_its_key(patch, expected):
    with pytest.raises(ManifestError) as info:
        parse_manifest(patch)
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def test_all_problems_reported_at_once():
    with pytest.raises(ManifestError) as info:
        parse_manifest({"sampling": {"sigma_km": 0, "n_locations": -3}, "patch": {"size_px": 2}})
    keys = {p.split(":")[0] for p in info.value.problems}
    assert {"sampling.sigma_km", "sampling.n_locations", "patch.size_px"} <= keys


def test_hash_ignores_compute_but_not_content():
    a = Manifest()
    assert a.content_hash() == Manifest(compute={"n_workers": 7}).content_hash()
    assert a.content_hash() != Manifest(sampling={"seed": 1}).content_hash()


def _write(tmp_path: Path, data) -> Path:
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return p


def test_cli_validate_exit_codes(tmp_path):
    runner = CliRunner()
    # the repository's manifest, with its store moved to tmp_path (whatever output/ holds here does not matter)
    data = yaml.safe_load((REPO / "data_manifest.yaml").read_text())
    data["store"]["path"] = str(tmp_path / "mini.zarr")
    data["pretrain"]["config"] = str(REPO / data["pretrain"]["config"])
    ok = runner.invoke(app, ["validate", str(_write(tmp_path, data))])
    assert ok.exit_code == 0, ok.output
    bad = runner.invoke(app, ["validate", str(_write(tmp_path, {"sampling": {"sigma_km": 0, "foo": 1}}))])
    assert bad.exit_code == 2
    assert "sampling.sigma_km: Input should be greater than 0" in bad.output
    assert "sampling.foo: unknown key" in bad.output
    broken = runner.invoke(app, ["validate", str(_write(tmp_path, "a: [1, 2"))])
    assert broken.exit_code == 2 and "not valid YAML" in broken.output
    missing = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "cannot read file" in missing.output


def test_credentials_never_stored_or_hashed():
    secret = "/home/me/keys/ee-service-account.json"
    m = Manifest(source={"kind": "earthengine", "earthengine": {"project": "p", "service_account_key": secret}},
                 store={"storage_options": {"key": "AKIA-SECRET"}})
    dumped = str(m.public_dump())
    assert secret not in dumped and "AKIA-SECRET" not in dumped and "<redacted>" in dumped
    assert secret not in repr(m)
    other = Manifest(source={"kind": "earthengine", "earthengine": {"project": "p", "service_account_key": "/x"}})
    assert m.content_hash() == other.content_hash()


# ------------------------------------------------------------------------------------------ bad input
def test_impossible_date_names_its_key(tmp_path):
    """YAML would build a date and fail on 2021-02-30 without saying where: the key path is named."""
    path = _write(tmp_path, "seasons:\n  reference_dates: [2021-03-20, 2021-02-30]\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert [p.split(":")[0] for p in info.value.problems] == ["seasons.reference_dates.1"]
    tagged = _write(tmp_path, "seasons:\n  reference_dates: [!!timestamp 2021-02-30]\n")
    with pytest.raises(ManifestError, match="day is out of range"):
        load_manifest(tagged)
    m = load_manifest(_write(tmp_path, "seasons:\n  reference_dates: [2021-03-20, 2020-12-21]\n"))
    assert m.seasons.reference_dates == [dt.date(2021, 3, 20), dt.date(2020, 12, 21)]


def test_binary_manifest_is_one_problem(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert len(info.value.problems) == 1 and "not a text file" in info.value.problems[0]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n"])
def test_empty_manifest_is_refused(tmp_path, text):
    """An empty file would otherwise curate the full 251,079-location default dataset."""
    with pytest.raises(ManifestError, match="empty manifest"):
        load_manifest(_write(tmp_path, text))


@pytest.mark.parametrize("key, value", [("n_locations", True), ("sigma_km", True), ("seed", False),
                                        ("n_locations", 12.0)])
def test_numbers_are_not_coerced_from_bools(key, value):
    with pytest.raises(ManifestError) as info:
        parse_manifest({"sampling": {key: value}})
    assert any(p.startswith(f"sampling.{key}:") for p in info.value.problems), info.value.problems
    m = parse_manifest({"sampling": {"sigma_km": 50, "n_locations": 7}, "compute": {"retry_delay_s": 0}})
    assert m.sampling.sigma_km == 50.0 and isinstance(m.sampling.sigma_km, float) and m.sampling.n_locations == 7


@pytest.mark.parametrize("path", ["", "   "])
def test_empty_store_path_is_refused(path):
    """An empty store path would resolve to the manifest's own folder."""
    with pytest.raises(ManifestError) as info:
        parse_manifest({"store": {"path": path}})
    assert info.value.problems[0].startswith("store.path: empty path")


def test_hash_ignores_synthetic_fail_rate():
    """fail_rate only injects transient errors that retries absorb: the archive's content is the same."""
    a = Manifest(source={"synthetic": {"fail_rate": 0.0}})
    b = Manifest(source={"synthetic": {"fail_rate": 0.3}})
    assert a.content_hash() == b.content_hash()
    assert a.content_hash() != Manifest(source={"synthetic": {"seed": 5}}).content_hash()


def test_manifest_error_is_bad_input():
    from pipeline.errors import BadInput

    with pytest.raises(BadInput) as info:
        parse_manifest({"colour": "blue"})
    assert info.value.problems == ["colour: unknown key"]
