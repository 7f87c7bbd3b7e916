"""Logistic-regression probe on frozen features, regularisation chosen on a validation split.

The linear-probe protocol of CLIP (Radford et al., "Learning Transferable Visual Models From
Natural Language Supervision", ICML 2021, appendix A.3: scikit-learn's L-BFGS logistic regression,
L2 strength swept on a validation split), which frozen-feature benchmark tooling for Earth
observation (e.g. torchgeo-bench on the GEO-Bench classification data sets, next to kNN with
k = 5) follows: an L2-regularised logistic regression (scikit-learn ``LogisticRegression``,
L-BFGS) for each inverse regularisation strength ``C`` of a log-spaced grid (:data:`DEFAULT_CS` =
10^-4 … 10^4, one value per decade; CLIP sweeps 10^-6 … 10^6 more finely, pass ``Cs`` for that);
the ``C`` with the best **validation** score is kept, the model is **refitted on train +
validation** with that ``C`` and scored once on the test split.

* Single-label targets ``(N,)``: one multinomial (softmax) model; scores are the class
  probabilities (classes absent from the fitting set get probability 0). Metrics: ``OA`` and the
  one-vs-rest ``mAP_macro`` of :func:`~train.evaluate.probe.classification_metrics`.
* Multi-label targets ``(N, C)``: one-vs-rest, one binary model per class; scores are the
  logits (decision at probability 0.5). A class that is all-positive or all-negative in the
  fitting set cannot be fitted; its score is the constant ±:data:`CONSTANT_LOGIT` (our choice).
  Metrics as the AdamW probe (mAP macro/micro/samples, F1 at 0.5, Hamming loss).

Our choices (configurable, stated because no paper fixes them):

* Features are z-scored with the statistics of the fitting set (train for the ``C`` search,
  train + validation for the refit; constant features become 0), as the AdamW probe does.
* The selection metric is ``OA`` (single-label) or ``mAP_macro`` (multi-label), the headline
  metrics of the report; ties go to the **smaller** ``C`` (stronger regularisation).
* Without a validation split (``val_x=None``), ``val_fraction`` (0.2) of the training items is
  held out for the search, chosen by ``numpy.random.default_rng(seed)``; with ``train_groups``
  whole groups (e.g. archive locations) are held out. The refit then uses the whole training set.
* ``max_iter=1000``; ``tol`` 1e-8 for ``newton-cholesky`` (two more Newton steps than 1e-4, and the
  difference matters for weakly regularised fits), 1e-4 for ``lbfgs``; the ``C`` search
  warm-starts each fit from the previous ``C`` (the problem is convex, so this only saves time).
  Convergence warnings are counted in the result (``config["convergence_warnings"]``), not printed.
* Multi-label binary models are fitted with scikit-learn's ``newton-cholesky`` solver when the
  fitting set has at least as many items as features (``solver="auto"``, the default; each Newton
  step factorises a D × D Hessian, so with more features than items, e.g. 2048-d ResNet-50 features
  of a few dozen patches, ``lbfgs`` is used instead): on frozen features (a few thousand items, a
  few hundred dimensions, weak regularisation) L-BFGS often stops far from the optimum (measured
  on 512-d ResNet-18 features of 2800 items at ``C = 1``: scores still 1.5 away from the exact optimum after
  1000 iterations, and 8× slower), while Newton steps reach it in a few iterations. The
  multinomial (single-label) model keeps ``lbfgs``.

As in scikit-learn, ``C`` multiplies the summed (not averaged) log-loss, so the refit on more
items with the same ``C`` is slightly less regularised; this is the usual refit practice
(scikit-learn's ``LogisticRegressionCV(refit=True)`` does the same).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from train.evaluate.bootstrap import BootstrapConfig, classification_intervals
from train.evaluate.probe import classification_metrics, is_multilabel

__all__ = ["CONSTANT_LOGIT", "DEFAULT_CS", "DEFAULT_MULTILABEL_SOLVER", "LogisticResult", "holdout_split",
           "train_logistic_probe"]

#: The default grid of inverse regularisation strengths: 10^-4 … 10^4, one per decade.
DEFAULT_CS: tuple[float, ...] = tuple(float(10.0 ** e) for e in range(-4, 5))
#: Logit given to a multi-label class that the fitting set has only as positive (+) or negative (−).
CONSTANT_LOGIT = 20.0
#: scikit-learn solver of the multi-label (one-vs-rest binary) models; ``auto``: ``newton-cholesky``
#: when the fitting set has at least as many items as features, else ``lbfgs`` (module docstring).
DEFAULT_MULTILABEL_SOLVER = "auto"
#: Stopping tolerance per scikit-learn solver when ``tol`` is not given.
DEFAULT_TOL = {"newton-cholesky": 1e-8, "lbfgs": 1e-4}
#: Metrics where lower is better (the search minimises them).
_LOWER_IS_BETTER = frozenset({"hamming_loss"})


@dataclass
class LogisticResult:
    """Outcome of :func:`train_logistic_probe`."""

    metrics: dict[str, float]
    per_class_ap: list[float | None]
    scores: torch.Tensor | None
    config: dict[str, Any]
    c_search: dict[str, float]
    selected_C: float
    seconds: float = 0.0
    intervals: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no tensors)."""
        out = {"metrics": self.metrics, "per_class_ap": self.per_class_ap, "config": self.config,
               "c_search": self.c_search, "selected_C": self.selected_C, "seconds": round(self.seconds, 3)}
        if self.intervals:
            out["intervals"] = self.intervals
        return out


def holdout_split(n: int, fraction: float, seed: int = 0, groups: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, val)`` sorted item indices: ``round(fraction · G)`` of the ``G`` groups (at least one, and
    one left to fit) go to ``val``, chosen by ``numpy.random.default_rng(seed).permutation``.

    ``groups=None``: every item is its own group.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {fraction}")
    codes = np.arange(n) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    if len(codes) != n:
        raise ValueError(f"train_groups must have one entry per training item ({n})")
    n_groups = int(codes.max()) + 1 if n else 0
    if n_groups < 2:
        raise ValueError(f"cannot hold out a validation part of {n_groups} group(s); pass val_x / val_y")
    n_val = min(max(math.floor(fraction * n_groups + 0.5), 1), n_groups - 1)
    val_groups = np.random.default_rng(seed).permutation(n_groups)[:n_val]
    is_val = np.isin(codes, val_groups)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


class _Scaler:
    """z-score with the fitting set's mean and (population) std; std < 1e-6 maps the feature to 0."""

    def __init__(self, x: np.ndarray, enabled: bool = True, eps: float = 1e-6):
        self.enabled = enabled
        if enabled:
            self.mean = x.mean(0)
            std = x.std(0)
            self.inv = np.where(std > eps, 1.0 / np.maximum(std, eps), 0.0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) * self.inv if self.enabled else x


class _Model:
    """One-vs-rest binary models (multi-label) or one multinomial model (single-label) at one ``C``."""

    def __init__(self, multilabel: bool, num_classes: int, max_iter: int, tol: float | None, solver: str):
        self.multilabel, self.num_classes = multilabel, num_classes
        self.solver = solver if multilabel else "lbfgs"
        self.max_iter, self.tol = max_iter, DEFAULT_TOL.get(self.solver, 1e-4) if tol is None else tol
        self.estimators: dict[int, Any] = {}
        self.constant: dict[int, float] = {}
        self.n_warnings = 0

    def _estimator(self, key: int, c: float):
        from sklearn.linear_model import LogisticRegression

        est = self.estimators.get(key)
        if est is None:
            est = LogisticRegression(C=c, max_iter=self.max_iter, tol=self.tol, warm_start=True,
                                     solver=self.solver)
            self.estimators[key] = est
        else:
            est.set_params(C=c)
        return est

    def fit(self, x: np.ndarray, y: np.ndarray, c: float) -> _Model:
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            if self.multilabel:
                for j in range(y.shape[1]):
                    col = y[:, j] > 0
                    if col.all() or not col.any():
                        self.constant[j] = CONSTANT_LOGIT if col.all() else -CONSTANT_LOGIT
                        self.estimators.pop(j, None)
                    else:
                        self.constant.pop(j, None)
                        self._estimator(j, c).fit(x, col.astype(np.int64))
            else:
                present = np.unique(y)
                if len(present) == 1:
                    self.constant = {0: float(present[0])}
                    self.estimators.clear()
                else:
                    self.constant = {}
                    self._estimator(0, c).fit(x, y)
        self.n_warnings += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        return self

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(n, C)`` (multi-label) or class probabilities ``(n, num_classes)`` (single-label)."""
        out = np.zeros((len(x), self.num_classes))
        if self.multilabel:
            for j in range(self.num_classes):
                out[:, j] = self.constant[j] if j in self.constant else self.estimators[j].decision_function(x)
        elif self.constant:
            out[:, int(self.constant[0])] = 1.0
        else:
            est = self.estimators[0]
            out[:, est.classes_.astype(np.int64)] = est.predict_proba(x)
        return out


def _metrics(model: _Model, x: np.ndarray, y: np.ndarray, num_classes: int) -> tuple[dict, list, torch.Tensor]:
    scores = torch.from_numpy(model.scores(x))
    if model.multilabel:
        m, ap = classification_metrics(scores, torch.from_numpy(y))
    else:
        m, ap = classification_metrics(scores, torch.from_numpy(y), num_classes, probabilities=True)
    return m, ap, scores


def _as_numpy(x: Any, dtype=np.float64) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def train_logistic_probe(train_x: Any, train_y: Any, test_x: Any = None, test_y: Any = None, *,
                         val_x: Any = None, val_y: Any = None, Cs: Sequence[float] = DEFAULT_CS,
                         multilabel: bool | None = None, num_classes: int | None = None,
                         selection_metric: str | None = None, val_fraction: float = 0.2,
                         train_groups: Any = None, seed: int = 0, max_iter: int = 1000, tol: float | None = None,
                         standardize: bool = True, keep_scores: bool = True,
                         solver: str = DEFAULT_MULTILABEL_SOLVER,
                         bootstrap: BootstrapConfig | Mapping[str, Any] | None = None,
                         test_groups: Any = None) -> LogisticResult:
    """Pick ``C`` on the validation split, refit on train + validation, score on test (module docstring).

    Args:
        train_x, val_x, test_x: ``(N, D)`` features (tensors or arrays).
        train_y, val_y, test_y: ``(N, C)`` multi-hot or ``(N,)`` class ids.
        Cs: grid of inverse regularisation strengths (searched in increasing order).
        multilabel: default ``train_y.ndim == 2``.
        num_classes: single-label class count (default: max label + 1 over all splits).
        selection_metric: validation metric to maximise (``hamming_loss`` is minimised); default
            ``OA`` (single-label) / ``mAP_macro`` (multi-label).
        val_fraction, train_groups, seed: the held-out validation part when ``val_x`` is None.
        max_iter, tol: solver settings of each fit (``tol=None``: :data:`DEFAULT_TOL` of the solver).
        standardize: z-score the features with the fitting set's statistics.
        solver: scikit-learn solver of the multi-label binary models (module docstring).
        keep_scores: keep the test scores in the result.
        bootstrap: interval settings (:class:`~train.evaluate.bootstrap.BootstrapConfig` or a
            mapping); None = no intervals.
        test_groups: per test item group ids for the grouped bootstrap (None: items).

    Returns:
        :class:`LogisticResult` (``metrics`` empty when no test set is given).
    """
    t0 = time.perf_counter()
    cs = sorted(float(c) for c in (Cs if isinstance(Cs, Sequence) else [Cs]))
    if not cs or any(not c > 0 for c in cs):
        raise ValueError(f"Cs must be positive numbers, got {Cs!r}")
    xtr = _as_numpy(train_x)
    ytr_t = torch.as_tensor(train_y)
    multilabel = is_multilabel(ytr_t) if multilabel is None else multilabel
    ytr = _as_numpy(train_y, np.float64 if multilabel else np.int64)
    if (val_x is None) != (val_y is None):
        raise ValueError("give both val_x and val_y, or neither")
    if val_x is None:
        fit_idx, val_idx = holdout_split(len(xtr), val_fraction, seed, train_groups)
        xfit, yfit, xval, yval = xtr[fit_idx], ytr[fit_idx], xtr[val_idx], ytr[val_idx]
        val_source = (f"held-out {val_fraction:g} of the training "
                      f"{'groups' if train_groups is not None else 'items'} (seed {seed})")
    else:
        xfit, yfit = xtr, ytr
        xval = _as_numpy(val_x)
        yval = _as_numpy(val_y, np.float64 if multilabel else np.int64)
        val_source = "validation split"
    yte = None if test_y is None else _as_numpy(test_y, np.float64 if multilabel else np.int64)
    if multilabel:
        c_out = ytr.shape[1]
    else:
        seen = [int(a.max()) for a in (ytr, yval, yte) if a is not None and len(a)]
        c_out = num_classes or (max(seen) + 1 if seen else 1)
    metric_name = selection_metric or ("mAP_macro" if multilabel else "OA")
    sign = -1.0 if metric_name in _LOWER_IS_BETTER else 1.0

    # -- search C on the validation part
    if solver == "auto":
        solver = "newton-cholesky" if xfit.shape[0] >= xfit.shape[1] else "lbfgs"
    scaler = _Scaler(xfit, standardize)
    fx, vx = scaler(xfit), scaler(xval)
    search_model = _Model(multilabel, c_out, max_iter, tol, solver)
    search: dict[str, float] = {}
    best_c, best_value = cs[0], -math.inf
    for c in cs:
        m, _, _ = _metrics(search_model.fit(fx, yfit, c), vx, yval, c_out)
        if metric_name not in m:
            raise ValueError(f"selection_metric {metric_name!r} is not one of {sorted(m)}")
        value = m[metric_name]
        search[f"{c:g}"] = value
        v = -math.inf if value is None or math.isnan(value) else sign * float(value)
        if v > best_value:  # strict: ties keep the smaller C
            best_c, best_value = c, v

    # -- refit on train + validation with the chosen C
    if val_x is None:
        xall, yall = xtr, ytr
    else:
        xall, yall = np.concatenate([xtr, xval]), np.concatenate([ytr, yval])
    final_scaler = _Scaler(xall, standardize)
    final = _Model(multilabel, c_out, max_iter, tol, solver).fit(final_scaler(xall), yall, best_c)

    metrics: dict[str, float] = {}
    per_class: list[float | None] = []
    scores = None
    intervals: dict[str, Any] = {}
    if test_x is not None and yte is not None:
        m, per_class, scores = _metrics(final, final_scaler(_as_numpy(test_x)), yte, c_out)
        metrics = m
        cfg = BootstrapConfig.coerce(bootstrap)
        if cfg is not None and len(yte):
            intervals = classification_intervals(scores, torch.from_numpy(yte), c_out, threshold=0.0,
                                                 probabilities=not multilabel, groups=test_groups, config=cfg)
    config = {"multilabel": multilabel, "num_classes": c_out, "Cs": cs, "selected_C": best_c,
              "selection_metric": metric_name, "validation": val_source, "refit": "train + validation",
              "n_fit": len(xfit), "n_val": len(xval), "n_refit": len(xall),
              "n_test": 0 if yte is None else len(yte), "standardize": standardize,
              "max_iter": max_iter, "tol": final.tol, "seed": seed,
              "model": "one-vs-rest binary logistic regression" if multilabel else "multinomial logistic regression",
              "solver": f"scikit-learn LogisticRegression ({final.solver}, L2)",
              "convergence_warnings": search_model.n_warnings + final.n_warnings}
    return LogisticResult(metrics=metrics, per_class_ap=per_class, scores=scores if keep_scores else None,
                          config=config, c_search=search, selected_C=best_c,
                          seconds=time.perf_counter() - t0, intervals=intervals)
