"""``softcon`` commands that train and evaluate backbones: evaluate, pretrain.

Plain functions with typer parameters, registered on the one ``app`` by :mod:`flows.cli` (whose error
handling applies: bad input is one ``error: …`` line and exit code 2).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from flows.cli_common import console, offline_defaults
from pipeline.errors import BadInput

__all__ = ["evaluate", "pretrain"]


def evaluate(
    checkpoints: list[str] = typer.Argument(..., help="run folders, weight files, 'random:<arch>' or 'pixels'"),
    task: str = typer.Option(..., help="archive | bigearthnet_v1 | bigearthnet_v2 | eurosat"),
    opt: list[str] = typer.Option([], help="task reader option key=value, repeatable (e.g. store=..., root=...)"),
    protocol: list[str] = typer.Option(
        ["linear", "logistic", "knn", "retrieval"],
        help="linear (AdamW probe) | logistic (C chosen on val, refit on train+val) | knn | retrieval | finetune"),
    fraction: Optional[float] = typer.Option(None, help="training subset, e.g. 0.1 for BigEarthNet-10%"),
    seed: list[int] = typer.Option([0], help="evaluation seed; repeat it (--seed 0 --seed 1 --seed 2) for mean ± std"),
    out: Path = typer.Option(Path("output/eval"), help="folder for results.json, results.md and plots"),
    device: str = typer.Option("auto"),
    baselines: bool = typer.Option(True, help="add the random-init and raw-pixel baselines"),
    resize_to: Optional[int] = typer.Option(None, help="resize inputs, e.g. 224 for ViTs"),
    allow_overlap: bool = typer.Option(
        False, "--allow-overlap",
        help="archive task: evaluate a checkpoint trained on patches of the test split (refused otherwise; "
             "the report then warns in bold)"),
) -> None:
    """Compare checkpoints on a downstream task: linear probe, kNN, retrieval, fine-tuning.

    Example: softcon evaluate runs/softcon-mini pixels --task archive --opt store=output/ssl4eo_s12_ml_mini.zarr
    """
    offline_defaults()
    from train.evaluate.run import evaluate as run_evaluation
    from train.evaluate.run import parse_task_options

    seeds = sorted(set(seed))
    by_seed = {}
    for s in seeds:
        folder = Path(out) if len(seeds) == 1 else Path(out) / f"seed-{s}"
        by_seed[s] = run_evaluation(checkpoints, task, parse_task_options(opt), protocols=tuple(protocol),
                                    out_dir=folder, fraction=fraction, seed=s, device=device, baselines=baselines,
                                    resize_to=resize_to, allow_overlap=allow_overlap)
    if len(seeds) == 1:
        md = Path(out) / "results.md"
    else:
        from train.evaluate.seeds import write_seed_summary

        md = write_seed_summary(by_seed, out, task)
    console.print(md.read_text())


def pretrain(
    config: Path = typer.Argument(..., help="training config YAML (see configs/pretrain_mini.yaml)"),
    archive: Optional[str] = typer.Option(None, help="archive to train on (overrides the config)"),
    resume: bool = typer.Option(False, help="continue from the latest checkpoint in output_dir"),
    epochs: Optional[int] = typer.Option(None, help="override the number of epochs"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Pretrain a backbone on an archive (SoftCon by default). Under torchrun it runs DDP.

    Example: softcon pretrain configs/pretrain_mini.yaml
    """
    offline_defaults()
    from pydantic import ValidationError

    from train.pretrain import run_pretraining

    if not config.is_file():
        raise BadInput(f"{config}: training config not found")
    try:
        summary = run_pretraining(config, archive=archive, resume=resume, epochs=epochs,
                                  progress=progress and sys.stderr.isatty())
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise BadInput(f"{config}: invalid training config: {problems}") from err
    if summary["rank"] != 0:
        return
    losses = summary["losses"]
    if losses:
        console.print(f"{summary['steps']} steps on {summary['device']} in {summary['seconds']} s; "
                      f"loss {losses[0]:.4f} → {losses[-1]:.4f}")
    console.print(f"outputs (checkpoints, metrics.csv, tensorboard/, backbone.safetensors): {summary['output_dir']}")
