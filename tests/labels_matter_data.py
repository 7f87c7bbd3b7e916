"""A tiny curated archive on which labels matter: a strong per-item shortcut, a weak label signal.

The archive is a real curated synthetic archive (:func:`archive_helpers.synthetic_archive`: the
pipeline's layout, status, split machinery), whose ``s2_l1c`` images and labels are then rewritten:

* **labels**: every (patch, season) item draws one of ``n_groups`` groups (default :data:`N_GROUPS` = 2);
  group ``g`` carries the Dynamic World classes ``2g`` and ``2g + 1`` (``multi_hot`` 1 for both,
  ``label_fraction`` 0.5 each), so two items share labels exactly when they share a group;
* **images**, in the normalised units the training data set feeds the network (SoftCon scaling of the
  published statistics, :class:`train.data.Normalizer`; written back as the DN that scale to them):
  every pixel of band ``c`` is ``BASE + n_c + l_c + e``, with

  - ``n_c`` ~ U(−:data:`NUISANCE`, +:data:`NUISANCE`) on the nuisance bands (B1–B8A), drawn per item:
    a spectral signature that is constant over the image, so both augmented views of an item keep it
    (crops, flips, blur and Siamese masking leave a constant band unchanged; brightness scales every
    band alike). It identifies an item among the batch almost surely and says nothing of its labels:
    the shortcut that instance discrimination (InfoNCE) can take;
  - ``l_c`` = :data:`LABEL_STEP` on the label band of the item's group (``LABEL_BANDS[g]``: B9, B10,
    …), 0 on the others: the only label signal, shared by all items of a group and small next to the
    nuisance (one band against nine);
  - ``e`` ~ N(0, :data:`PIXEL_NOISE`²) per pixel: texture that differs between crops.

The archive's split is rewritten as a split by city with no validation share (``pipeline.split``),
so pretraining runs on ``train`` and the product's evaluation (:func:`train.evaluate.run.evaluate`,
task ``archive``) fits kNN on ``train`` and scores the unseen ``test`` locations.
"""

from __future__ import annotations

import numpy as np
import zarr
from archive_helpers import synthetic_archive

from pipeline.split import write_split
from train.data import Normalizer

N_GROUPS = 2  # with 4 groups SoftCon's soft term (3 of 4 pairs negative) learned too slowly for a short run
BASE = 0.55
NUISANCE = 0.15
LABEL_STEP = 0.10
PIXEL_NOISE = 0.01
NUISANCE_BANDS = slice(0, 9)  # B1 … B8A of the 13 L1C bands
LABEL_BANDS = (9, 10, 11, 12)  # B9, B10, B11, B12: one per group


def group_labels(groups: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(multi_hot, label_fraction)`` of items of the given groups: classes ``2g`` and ``2g + 1``."""
    multi_hot = np.zeros(groups.shape + (n_classes,), np.uint8)
    for g in range(int(groups.max()) + 1):
        multi_hot[groups == g, 2 * g] = 1
        multi_hot[groups == g, 2 * g + 1] = 1
    return multi_hot, (multi_hot * 0.5).astype(np.float32)


def normalised_images(groups: np.ndarray, size: int, rng: np.random.Generator, n_bands: int = 13) -> np.ndarray:
    """Images ``[..., n_bands, size, size]`` in normalised units for items of the given groups (module docstring)."""
    lead = groups.shape
    x = np.full(lead + (n_bands, 1, 1), BASE, np.float64)
    x[..., NUISANCE_BANDS, :, :] += rng.uniform(-NUISANCE, NUISANCE, lead + (9, 1, 1))
    for g in range(int(groups.max()) + 1):
        x[..., LABEL_BANDS[g], :, :] += np.where(groups == g, LABEL_STEP, 0.0)[..., None, None]
    return x + rng.normal(0.0, PIXEL_NOISE, lead + (n_bands, size, size))


def to_dn(u: np.ndarray, normalizer: Normalizer) -> np.ndarray:
    """The uint16 DN whose SoftCon scaling ``(x − (μ − 2σ)) / 4σ`` is ``u`` (bands on axis −3)."""
    lo = np.asarray(normalizer.mean, np.float64) - 2 * np.asarray(normalizer.std, np.float64)
    width = 4 * np.asarray(normalizer.std, np.float64)
    dn = lo[:, None, None] + width[:, None, None] * u
    return np.clip(np.rint(dn), 1, 65535).astype(np.uint16)


def labels_matter_archive(path, n_locations: int = 96, size_px: int = 16, seed: int = 0,
                          test_share: float = 0.25, n_groups: int = N_GROUPS) -> str:
    """Write the archive of the module docstring at ``path``; returns its path.

    Args:
        path: the archive to create.
        n_locations: sampled locations (each has 4 seasons, i.e. 4 items).
        size_px: image side.
        seed: draws of groups, nuisance and noise.
        test_share: share of locations (cities) in the ``test`` split; the rest is ``train``.
        n_groups: label groups (at most :data:`N_GROUPS`).
    """
    synthetic_archive(path, n_locations=n_locations, size_px=size_px, patches_per_shard=16)
    g = zarr.open_group(str(path), mode="r+")
    n_patches, n_seasons, n_classes = g["multi_hot"].shape
    bands = list(g.attrs["band_names"]["s2_l1c"])
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, n_groups, size=(n_patches, n_seasons))
    multi_hot, fraction = group_labels(groups, n_classes)
    g["multi_hot"][:] = multi_hot
    g["label_fraction"][:] = fraction
    u = normalised_images(groups, size_px, rng, len(bands))
    g["s2_l1c"][:] = to_dn(u, Normalizer.published("s2_l1c", bands))
    write_split(str(path), by="city", val=0.0, test=test_share, seed=seed)
    return str(path)


# --------------------------------------------------------------------------- runs and their scores
#: The run settings shared by every loss: ResNet-18 on 16 px crops, the product's augmentations, EMA
#: target and BatchNorm recalibration, 8 epochs of the train split (64–72 steps). Our choices for a
#: short run: base_lr 0.01 (1.25e-3 at batch 32; SupCon stalled at 0.05 in our trials), EMA momentum
#: 0.9 → 0.99 so that the target follows within 70 steps (at 0.99 → 1 it barely moves), and no
#: Siamese masking (at 16 px its 14 px cells blank whole quarters of the image; see the test module).
RUN = dict(crop_size=16, batch_size=32, num_workers=0, proj_hidden=128, proj_out=64, pred_hidden=128,
           epochs=8, warmup_epochs=1.0, base_lr=0.01, log_every=10_000, bn_recalibration_batches=4,
           keep_checkpoints=1, momentum=0.9, momentum_final=0.99, mask_ratio=0.0)


def pretrain_config(archive: str, out, loss: str, seed: int, **overrides):
    """The :class:`~train.pretrain_config.PretrainConfig` of one run: ``loss`` with its default options."""
    from train.pretrain_config import PretrainConfig

    return PretrainConfig.model_validate({**RUN, "archive": archive, "output_dir": str(out), "seed": seed,
                                          "loss": {"name": loss, "options": {}}, **overrides})


def knn_and_retrieval(archive: str, runs: dict[str, str], out_dir, baselines: bool = False) -> dict[str, dict]:
    """The product's evaluation of each run folder on the archive task (kNN fitted on ``train``, scored on
    ``test``; retrieval among the ``test`` items): ``{name: {"knn": metrics, "retrieval": metrics}}``.
    """
    from train.evaluate.run import evaluate

    res = evaluate(list(runs.values()), "archive", {"store": archive}, protocols=("knn", "retrieval"),
                   out_dir=out_dir, baselines=baselines, device="cpu", cache_dir=None, bootstrap=False,
                   plot_examples=0)
    by_path = {row["checkpoint"]: row for row in res["checkpoints"].values()}
    out = {}
    for name, path in runs.items():
        row = next(r for p, r in by_path.items() if str(p).startswith(str(path)))
        out[name] = {"knn": row["knn"]["metrics"], "retrieval": row["retrieval"]["metrics"]}
    for label, row in res["checkpoints"].items():
        if baselines and row["kind"] != "run":
            out[label] = {"knn": row["knn"]["metrics"], "retrieval": row["retrieval"]["metrics"]}
    return out
