"""The command line on bad input: one line naming what is wrong, exit 2; other failures: one line, exit 1."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ["validate", "curate", "inspect", "locations", "evaluate", "import-labels", "labels", "pretrain", "stats"]


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def write_manifest(tmp_path: Path, **sections) -> Path:
    """A tiny valid manifest (synthetic source, store in tmp_path) with some sections replaced."""
    data = {"sampling": {"n_locations": 4}, "patch": {"size_px": 32},
            "store": {"path": str(tmp_path / "out" / "a.zarr")}}
    data.update(sections)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------ manifest files
def test_impossible_date_exits_2_with_key_path(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("seasons:\n  reference_dates: [2021-02-30, 2021-06-21]\n")
    res = run("validate", str(path))
    assert res.exit_code == 2, res.output
    assert error_lines(res.output) == [f"error: {path}: seasons.reference_dates.0: Input should be a valid date "
                                       "or datetime, day value is outside expected range"]


def test_binary_manifest_is_one_line(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_bytes(bytes(range(256)))
    res = run("validate", str(path))
    assert res.exit_code == 2, res.output
    lines = error_lines(res.output)
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: not a text file"), lines


@pytest.mark.parametrize("text", ["", "# comments only\n"])
def test_empty_manifest_is_refused(tmp_path, text):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    for command in ("validate", "curate"):
        res = run(command, str(path))
        assert res.exit_code == 2 and "empty manifest" in res.output, res.output
    assert not (tmp_path / "output").exists()


def test_bool_for_a_number_is_refused(tmp_path):
    res = run("validate", str(write_manifest(tmp_path, sampling={"n_locations": True})))
    assert res.exit_code == 2 and "sampling.n_locations: Input should be a valid integer" in res.output, res.output


def test_empty_store_path_is_refused(tmp_path):
    res = run("validate", str(write_manifest(tmp_path, store={"path": ""})))
    assert res.exit_code == 2 and "store.path: empty path" in res.output, res.output


# ------------------------------------------------------------------------------------------ preflight
def test_store_that_cannot_be_created_is_reported(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    cases = [(str(a_file / "a.zarr"), f"{a_file} is a file, not a folder"),
             (str(a_file), f"{a_file} is a file, not a folder")]
    if sys.platform.startswith("linux"):  # /proc takes no new folders, even from root (os.access says yes)
        cases.append(("/proc/softcon-test/a.zarr", "store.path: cannot create /proc/softcon-test/a.zarr"))
    for store, expected in cases:
        res = run("validate", str(write_manifest(tmp_path, store={"path": store})))
        assert res.exit_code == 2, res.output
        assert expected in res.output, res.output
    remote = run("validate", str(write_manifest(tmp_path, store={"path": "s3://some-bucket/a.zarr"})))
    assert remote.exit_code == 0, remote.output  # fsspec URLs are not checked
    deep = run("validate", str(write_manifest(tmp_path, store={"path": str(tmp_path / "new" / "deeper" / "a.zarr")})))
    assert deep.exit_code == 0, deep.output
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".softcon-preflight-*"))


def test_missing_source_files_and_city_table_are_reported(tmp_path):
    path = write_manifest(tmp_path, source={"kind": "local", "local": {"root": "no-such-copy", "labels": "dw.tif"}},
                          sampling={"n_locations": 4, "city_table": "cities.csv"})
    res = run("validate", str(path))
    assert res.exit_code == 2, res.output
    keys = [line.split(":")[0].strip() for line in error_lines(res.output)[1:]]
    assert keys == ["source.local.root", "source.local.labels", "sampling.city_table"], res.output
    assert str(tmp_path / "no-such-copy") in res.output


def test_pretrain_config_is_checked_before_curating(tmp_path):
    missing = run("validate", str(write_manifest(tmp_path, pretrain={"enabled": True, "config": "train.yaml"})))
    assert missing.exit_code == 2 and f"pretrain.config: {tmp_path / 'train.yaml'}" in missing.output, missing.output
    unnamed = run("validate", str(write_manifest(tmp_path, pretrain={"enabled": True})))
    assert unnamed.exit_code == 2 and "pretrain.config: pretrain.enabled is true" in unnamed.output, unnamed.output
    (tmp_path / "train.yaml").write_text("crop_size: 2\nloss: {name: softcon, colour: blue}\n")
    invalid = run("curate", str(write_manifest(tmp_path, pretrain={"enabled": True, "config": "train.yaml"})))
    assert invalid.exit_code == 2, invalid.output
    assert f"pretrain.config: {tmp_path / 'train.yaml'}: crop_size:" in invalid.output
    assert "loss.colour: Extra inputs are not permitted" in invalid.output
    assert not (tmp_path / "out").exists()  # curate stopped before creating anything
    (tmp_path / "train.yaml").write_text("crop_size: 32\n")
    ok = run("validate", str(write_manifest(tmp_path, pretrain={"enabled": True, "config": "train.yaml"})))
    assert ok.exit_code == 0, ok.output


# ------------------------------------------------------------------------------------------ error reporting
def _raise(exc: Exception):
    def fail(*args, **kwargs):
        raise exc
    return fail


def test_uncaught_error_is_one_line_exit_1(tmp_path, monkeypatch):
    import pipeline.manifest

    monkeypatch.setattr(pipeline.manifest, "load_manifest", _raise(RuntimeError("disk on fire\nsecond line")))
    res = run("validate", str(tmp_path / "m.yaml"))
    assert res.exit_code == 1
    assert error_lines(res.output) == ["error: RuntimeError: disk on fire second line"]
    debug = run("--debug", "validate", str(tmp_path / "m.yaml"))
    assert debug.exit_code == 1
    assert "Traceback (most recent call last)" in debug.output and "RuntimeError: disk on fire" in debug.output


def test_bad_input_is_one_line_exit_2(tmp_path, monkeypatch):
    import pipeline.manifest
    from pipeline.errors import BadInput

    class SomethingWrong(BadInput):
        pass

    monkeypatch.setattr(pipeline.manifest, "load_manifest", _raise(SomethingWrong("store.path: taken; pick another")))
    res = run("validate", str(tmp_path / "m.yaml"))
    assert res.exit_code == 2 and error_lines(res.output) == ["error: store.path: taken; pick another"]
    debug = run("--debug", "validate", str(tmp_path / "m.yaml"))
    assert debug.exit_code == 2 and "Traceback" in debug.output


def test_help_documents_exit_codes_and_debug():
    res = run("--help")
    assert res.exit_code == 0
    text = " ".join(res.output.split())
    assert "Exit codes: 0 success; 1 the run failed; 2 bad input" in text and "--debug" in text


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_has_an_example(command):
    res = run(command, "--help")
    assert res.exit_code == 0, res.output
    assert f"Example: softcon {command} " in res.output, res.output


@pytest.mark.parametrize("command", ["stats", "inspect", "labels", "import-labels"])
def test_missing_store_is_bad_input(tmp_path, command):
    store = str(tmp_path / "nothing-here.zarr")
    args = [command, str(tmp_path / "labels.json"), store] if command == "import-labels" else [command, store]
    res = run(*args)
    assert res.exit_code == 2, res.output
    lines = error_lines(res.output)
    assert len(lines) == 1 and lines[0].startswith(f"error: {store}: no softcon archive there"), lines


FAILING_FLOW = textwrap.dedent("""
    import sys

    from prefect import flow

    import flows.curate


    @flow(name="inner")
    def inner():
        raise RuntimeError("inner boom")


    @flow(name="outer")
    def outer(*args, **kwargs):
        return inner()


    flows.curate.curate_manifest = outer
    from flows.cli import app

    app(sys.argv[1:])
""")


@pytest.mark.slow  # about 20 s: Prefect starts its temporary server
def test_failed_flow_prints_at_most_one_traceback(tmp_path):
    """A flow and its parent flow each log the traceback; without --debug only the error line is left."""
    script = tmp_path / "fail.py"
    script.write_text(FAILING_FLOW)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO),
           "PREFECT_LOGGING_LEVEL": "INFO"}
    proc = subprocess.run([sys.executable, str(script), "curate", str(write_manifest(tmp_path)), "--no-progress"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-3000:]
    assert "error: RuntimeError: inner boom" in out.splitlines(), out[-3000:]
    assert out.count("Traceback") <= 1, out[-3000:]


# ------------------------------------------------------------------------------------------ Earth Engine
@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    """No stored Earth Engine or Google credentials anywhere this process could find them."""
    home = tmp_path / "empty-home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("SOFTCON_EE_KEY", "GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return home


def test_earthengine_without_credentials_is_one_line_exit_2(tmp_path, no_credentials):
    path = write_manifest(tmp_path, source={"kind": "earthengine"})
    for command in ("validate", "curate"):
        res = run(command, str(path))
        assert res.exit_code == 2, res.output
        lines = error_lines(res.output)
        assert len(lines) == 1 and "source.earthengine: no Earth Engine credentials found" in lines[0], lines
        assert "earthengine authenticate" in lines[0] and "SOFTCON_EE_KEY" in lines[0]
    assert not (tmp_path / "out").exists()


def test_earthengine_bad_key_is_reported_without_its_path(tmp_path, no_credentials, monkeypatch):
    key = tmp_path / "private-keys-dir" / "sa-key-secret.json"
    key.parent.mkdir()
    key.write_text('{"type": "service_account", "private_key": "TOPSECRETKEYMATERIAL"}')
    monkeypatch.setenv("SOFTCON_EE_KEY", str(key))
    res = run("validate", str(write_manifest(tmp_path, source={"kind": "earthengine"})))
    assert res.exit_code == 2, res.output
    assert "SOFTCON_EE_KEY" in res.output and "earthengine authenticate" in res.output
    assert "private-keys-dir" not in res.output and "TOPSECRET" not in res.output and key.name not in res.output


def test_earthengine_auth_error_is_bad_input(no_credentials):
    """Where the run authenticates: the error is a configuration problem that says what to do."""
    from pipeline.errors import BadInput
    from pipeline.manifest import EarthEngineSourceOptions
    from pipeline.sources.earthengine import EarthEngineAuthError, EarthEngineSource

    assert issubclass(EarthEngineAuthError, BadInput)
    with pytest.raises(EarthEngineAuthError) as info:
        EarthEngineSource(EarthEngineSourceOptions(project="demo")).initialize()
    message = str(info.value)
    assert "\n" not in message and "earthengine authenticate" in message and "SOFTCON_EE_KEY" in message
