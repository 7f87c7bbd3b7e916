"""The text an evaluation report shows about how it was run: the settings of each protocol and the
data set's own description with the input scaling used (``results.json`` / ``results.md``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from train.data import Normalizer
from train.evaluate.knn import HEADLINE_K
from train.evaluate.retrieval import IMBRIACO_SEED
from train.evaluate.tasks import EvalTask

__all__ = ["dataset_description", "protocol_settings"]



def _shown(kwargs: dict | None) -> dict:
    """The options a user set, as the report shows them (the device is not an option of the protocol)."""
    return {k: v for k, v in (kwargs or {}).items() if k != "device"}

def protocol_settings(probe_kw: Mapping, knn_kw: Mapping, ret_kw: Mapping, ft_kw: Mapping,
                      protocols: Sequence[str], lg_kw: Mapping | None = None) -> dict[str, str]:
    """One line per protocol run: its method and the settings given (or the defaults used)."""
    lg = {k: v for k, v in (lg_kw or {}).items() if k not in ("device", "bootstrap", "test_groups", "train_groups")}
    text = {
        "logistic": "frozen features, z-scored with the fitting set's statistics; scikit-learn L2 logistic "
                    "regression (lbfgs; multi-label one-vs-rest, single-label multinomial); C chosen on the "
                    "validation split (else a held-out 20 % of train groups) by mAP_macro (multi-label) / OA, "
                    "ties to the smaller C, then refitted on train + validation; "
                    f"{lg or 'C = 1e-4 … 1e4 (one per decade), max_iter 1000'}",
        "linear": "frozen features, z-scored with train statistics; linear head, AdamW + cosine, zero init; "
                  f"{_shown(probe_kw) or 'defaults (100 epochs, lr 1e-3, wd 1e-4, batch 256)'}; "
                  "multi-label: BCE, macro mAP drops classes without test positives; F1 at 0.5",
        "knn": "cosine kNN, votes weighted exp(cos/T) and normalised; "
               f"{_shown(knn_kw) or 'k = 5, 10, 20, 100, T = 0.07'}; "
               f"table: k = {knn_kw.get('primary_k', HEADLINE_K)}",
        "retrieval": "test split, imbriaco_split 20 % queries / 80 % database, drawn over groups (archive: "
                     "locations, so no season of a query's location is in its database; other tasks: items) "
                     f"(seed {ret_kw.get('seed', IMBRIACO_SEED)}); cosine ranking; relevance >= 1 shared label; "
                     "AP@K normaliser = relevant retrieved (spec (a)); queries without relevant items excluded; "
                     "hard = Jaccard >= 0.8 (step AP, not Imbriaco's trapezoid)",
        "finetune": "whole backbone + linear head, AdamW (backbone lr / head_lr), cosine, dihedral flips; "
                    f"{_shown(ft_kw) or 'defaults (3 epochs, lr 1e-4, head_lr 1e-3)'}",
    }
    return {p: text[p] for p in protocols}


def dataset_description(base: EvalTask, norm: Normalizer | None, norm_desc: str) -> dict[str, Any] | None:
    """The task's own description (BigEarthNet: version, band convention) plus the input scaling used."""
    describe = getattr(base, "describe", None)
    if describe is None:
        return None
    out = dict(describe())
    out["statistics"] = (f"{norm_desc}; {norm.mode} scaling of bands {', '.join(norm.bands or ())}"
                         if norm is not None else norm_desc)
    return out
