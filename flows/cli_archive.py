"""``softcon`` commands on an archive: inspect, split, locations, import-labels, labels, stats.

Plain functions with typer parameters, registered on the one ``app`` by :mod:`flows.cli` (whose error
handling applies: bad input is one ``error: …`` line and exit code 2).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from flows.cli_common import console, require_archive
from pipeline.errors import BadInput

__all__ = ["import_labels", "inspect", "labels", "locations", "plain_value", "print_summary", "split", "split_line",
           "stats"]


def inspect(
    store: str = typer.Argument(..., help="archive path or fsspec URL, or a run folder or weight file"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Summarise an archive: patch counts, failures, class frequencies, the train/val/test split; or a
    pretraining run, backbone or checkpoint: architecture, bands, normalisation, training data, steps, loss.

    Example: softcon inspect output/ssl4eo_s12_ml_mini.zarr; softcon inspect runs/softcon-mini
    """
    from pipeline.archive import Archive
    from train.describe_run import describe_path, format_description, is_run_path

    if is_run_path(store):
        run = describe_path(store)
        console.print_json(json.dumps(run)) if as_json else console.print(escape(format_description(run)))
        return
    require_archive(store)
    summary, _ = Archive(store).describe()
    if as_json:
        console.print_json(json.dumps(summary))
    else:
        print_summary(summary)


def print_summary(s: dict) -> None:
    from pipeline.store import format_failure_kinds

    console.print(f"[bold]{s.get('title')}[/]  {s['path']}  source={s.get('source')}"
                  f"{'  [yellow](synthetic)[/]' if s.get('synthetic') else ''}")
    st = s["status"]
    console.print(f"patches: {s['n_patches']} × {s['n_seasons']} seasons — done {st['done']}, "
                  f"failed {st['failed']}, todo {st['todo']}; labelled images {s['labelled_images']}")
    if s.get("failures"):
        console.print("failures: " + format_failure_kinds(s["failures"]))
    table = Table(title="class frequency (share of labelled images where the class is present)")
    table.add_column("class")
    table.add_column("frequency", justify="right")
    for name, f in s["class_frequency"].items():
        table.add_row(name, f"{f:.3f}")
    console.print(table)
    if "this_run" in s:
        r = s["this_run"]
        console.print(f"this run: {r['shards']} shards, {r['done']} patches done, {r['failed']} failed "
                      f"in {r['seconds']} s; pretraining: {s.get('pretraining')}")
        if r.get("failure_reasons"):
            console.print("failed this run: " + format_failure_kinds(r["failure_reasons"]))
    if "report" in s:
        console.print(f"report (plots, summary.json): {s['report']}")
    if "split" in s:
        console.print(escape(split_line(s["split"])))
    if s.get("label_provenance"):
        console.print(escape(f"label provenance: {plain_value(s['label_provenance'])}"))
    if s.get("label_products"):  # pipeline.reference: e.g. reference, dw_probability
        console.print(escape("label products: " + ", ".join(f"{name} ({p['kind']}, {p['classes']} classes)"
                                                              for name, p in s["label_products"].items())))


def split_line(record: dict | None) -> str:
    """One line for a split record (see :mod:`pipeline.split`)."""
    if record is None:
        return "split: none (softcon split STORE writes one)"
    if "error" in record:
        return f"split: damaged: {record['error']}"
    counts = record.get("counts", {})
    total = sum(counts.values()) or 1
    shares = ", ".join(f"{name} {n} ({n / total:.1%})" for name, n in counts.items())
    grid = f", grid {record['grid_km']:g} km" if "grid_km" in record else ""
    return (f"split: by {record.get('by')}, seed {record.get('seed')}{grid} (targets val {record.get('val')}, "
            f"test {record.get('test')}): {shares}; hash {str(record.get('hash'))[:16]}")


def plain_value(value) -> str:
    """A summary value as one line: ``key value`` pairs for a mapping (nested values as compact JSON)."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v if isinstance(v, (str, int, float)) else json.dumps(v, separators=(',', ':'))}"
                         for k, v in value.items())
    return str(value)


def split(
    store: str = typer.Argument(..., help="archive path or fsspec URL"),
    by: str = typer.Option("city", help="unit kept whole: city (the sampling city) | grid (coarse grid cells)"),
    val: float = typer.Option(0.1, help="target share of locations in val"),
    test: float = typer.Option(0.2, help="target share of locations in test"),
    seed: int = typer.Option(0, help="seed of the shuffle of the units"),
    grid_km: float = typer.Option(100.0, "--grid-km",
                                  help="grid cell size in km (by grid; by city: locations without a city)"),
) -> None:
    """Rewrite the archive's train/val/test split by location, keeping whole cities (or grid cells) in
    one split; print the realised counts and the split's hash. Curation writes the default split.

    Example: softcon split output/ssl4eo_s12_ml_mini.zarr --by grid --grid-km 100 --seed 1
    """
    from pipeline.split import check_split_arguments, write_split
    from pipeline.store_target import archive_lock

    check_split_arguments(by, val, test, seed, grid_km)
    require_archive(store)
    with archive_lock(store):  # not while a curation writes the archive
        record = write_split(store, by=by, val=val, test=test, seed=seed, grid_km=grid_km)
    units = ", ".join(f"{name} {n}" for name, n in record["units"].items())
    kind = "grid cells" if by == "grid" else "cities and grid cells" if "grid_km" in record else "cities"
    console.print(escape(f"{store}: {split_line(record)[len('split: '):]}"))
    console.print(escape(f"units ({kind}): {units}; hash {record['hash']}"))


def locations(
    manifest: Path = typer.Argument(..., help="data_manifest.yaml"),
    out: Path = typer.Option(Path("locations.parquet"), help="GeoParquet to write"),
    plot: Optional[Path] = typer.Option(None, help="also write a map of the locations (PNG)"),
) -> None:
    """Sample the manifest's locations only (GeoParquet and an optional map).

    Example: softcon locations data_manifest.yaml --out locations.parquet --plot locations.png
    """
    from pipeline.figures.locations import plot_locations
    from pipeline.manifest import load_manifest
    from pipeline.sampling import (
        load_cities,
        locations_to_geodataframe,
        sample_locations,
        write_locations,
    )

    m = load_manifest(manifest)
    gdf = locations_to_geodataframe(sample_locations(m.sampling, m.patch), m.patch)
    write_locations(gdf, out)
    console.print(f"{len(gdf)} locations → {out}")
    if plot:
        cities = load_cities(m.sampling.city_table, m.sampling.top_n_cities)
        plot_locations(gdf, plot, title=f"{m.name}: {len(gdf)} locations", cities=cities)
        console.print(f"map → {plot}")


def import_labels(
    labels_json: Path = typer.Argument(..., help="published SSL4EO-S12-ML JSON (.json or .json.gz)"),
    store: str = typer.Argument(..., help="archive path or fsspec URL"),
    overwrite: bool = typer.Option(True, help="allow replacing labels of an earlier import"),
) -> None:
    """Write the published SSL4EO-S12-ML multi-labels into an archive's multi_hot, matched by location
    and S2 L1C image id. Recomputing labels or curating more patches replaces them: import again after.

    Example: softcon import-labels ssl4eo-s12-ml.json.gz output/ssl4eo_s12_ml_mini.zarr
    """
    from pipeline.published_labels import (
        PublishedLabelsError,
        format_report,
        import_published_labels,
    )

    require_archive(store)
    try:
        report = import_published_labels(labels_json, store, overwrite=overwrite)
    except PublishedLabelsError as err:
        raise BadInput(f"{labels_json}: {err}") from err
    console.print(format_report(report))


def labels(
    store: str = typer.Argument(..., help="archive path or fsspec URL"),
    presence_threshold: Optional[float] = typer.Option(
        None, help="a class is present above this fraction of valid pixels (default: the archive's manifest)"),
    min_valid_fraction: Optional[float] = typer.Option(
        None, help="fewer valid pixels than this share: unlabelled (default: the archive's manifest)"),
    batch_patches: int = typer.Option(256, help="patches per written region"),
) -> None:
    """Recompute label_fraction and multi_hot of every done patch from its Dynamic World maps (Dask
    over the archive's shards), e.g. with another presence threshold or after an import-labels.

    Example: softcon labels output/ssl4eo_s12_ml_mini.zarr --presence-threshold 0.05
    """
    from pipeline.labels import relabel_archive
    from pipeline.progress import progress_bar

    require_archive(store)
    try:
        with progress_bar(sys.stderr.isatty()) as bar:
            task = bar.add_task("labelling patches", total=None, status="")

            def advance(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            counts = relabel_archive(store, presence_threshold, min_valid_fraction, batch_patches, on_region=advance)
    except ValueError as err:  # a threshold out of range
        raise BadInput(str(err)) from err
    console.print(f"{store}: {counts['patches_done']} done patches relabelled "
                  f"(presence threshold {counts['presence_threshold']}, min valid fraction "
                  f"{counts['min_valid_fraction']}): {counts['patch_seasons_labelled']} labelled, "
                  f"{counts['patch_seasons_unlabelled']} unlabelled images; "
                  f"{counts['patches_skipped']} patches not done")


def stats(
    store: str = typer.Argument(..., help="archive path or fsspec URL"),
    modality: str = typer.Option("s2_l1c", help="s2_l1c | s2_l2a | s1_grd"),
    out: Path = typer.Option(Path("stats.json"), help="JSON file to write the per-band statistics to"),
    max_patches: Optional[int] = typer.Option(None, help="use at most this many done patches"),
    split: list[str] = typer.Option(["train"], help="split to use, repeatable (train | val | test), "
                                    "or 'all' for every done patch"),
) -> None:
    """Per-band mean and std of an archive's modality (for normalisation), written as JSON.

    Uses the archive's train split unless --split says otherwise; the file records the splits used.

    Example: softcon stats output/ssl4eo_s12_ml_mini.zarr --modality s2_l1c --out stats.json
    """
    from pipeline.bands import MODALITY_BANDS
    from pipeline.statistics import archive_statistics
    from train.data import save_statistics

    if modality not in MODALITY_BANDS:
        raise BadInput(f"--modality {modality}: unknown modality; choose one of {', '.join(MODALITY_BANDS)}")
    require_archive(store)
    st = archive_statistics(store, modality, splits="all" if split == ["all"] else split, max_patches=max_patches,
                            show_progress=sys.stderr.isatty())
    save_statistics(out, modality, st.bands, st.mean, st.std, **st.metadata())
    for b, m_, s_ in zip(st.bands, st.mean, st.std):
        console.print(f"{b:>4}  mean {float(m_):10.2f}  std {float(s_):10.2f}")
    used = st.splits if isinstance(st.splits, str) else ", ".join(st.splits)
    console.print(f"splits: {used} ({st.n_patches} patches) → {out}")
