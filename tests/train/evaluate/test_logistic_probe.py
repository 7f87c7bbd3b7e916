"""Logistic-regression probe: C chosen on the validation split, refit on train + validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from train.evaluate.logistic import (
    CONSTANT_LOGIT,
    DEFAULT_CS,
    holdout_split,
    train_logistic_probe,
)
from train.evaluate.probe import classification_metrics


def noisy_multilabel(n: int, rng: np.random.Generator, dirs: np.ndarray, shift: float = 1.0, flip: float = 0.2):
    """Three labels, each shifting the features along its own direction; 20 % of the labels flipped.

    With few items per feature (100 items, 120 features) the unregularised fit chases the flipped
    labels and the noise: strong regularisation (small C) is best.
    """
    y = (rng.random((n, dirs.shape[0])) < 0.5).astype(np.float32)
    x = rng.normal(size=(n, dirs.shape[1])) + ((2 * y - 1) @ dirs) * shift
    return x.astype(np.float32), np.where(rng.random(y.shape) < flip, 1 - y, y)


@pytest.fixture(scope="module")
def noisy():
    rng = np.random.default_rng(0)
    dirs = np.linalg.qr(rng.normal(size=(120, 3)))[0].T
    return [noisy_multilabel(n, rng, dirs) for n in (100, 200, 600)]  # train, val, test


def test_strong_regularisation_is_chosen_on_val_for_a_noisy_small_set(noisy):
    (xtr, ytr), (xva, yva), (xte, yte) = noisy
    res = train_logistic_probe(xtr, ytr, xte, yte, val_x=xva, val_y=yva)
    assert list(res.c_search) == [f"{c:g}" for c in DEFAULT_CS]
    assert res.selected_C <= 1e-3
    assert res.c_search[f"{res.selected_C:g}"] == max(res.c_search.values())
    assert res.c_search[f"{res.selected_C:g}"] > res.c_search["10000"] + 0.03
    weak = train_logistic_probe(xtr, ytr, xte, yte, val_x=xva, val_y=yva, Cs=[1e4])
    assert res.metrics["mAP_macro"] > weak.metrics["mAP_macro"] + 0.04  # the choice pays off on test
    # the choice is made on the validation split: scoring on the training items instead rewards
    # memorising them, i.e. weak regularisation
    memorised = train_logistic_probe(xtr, ytr, xte, yte, val_x=xtr, val_y=ytr)
    assert memorised.selected_C >= 0.1


def test_refit_on_train_plus_val_with_the_chosen_c(noisy):
    (xtr, ytr), (xva, yva), (xte, yte) = noisy
    res = train_logistic_probe(xtr, ytr, xte, yte, val_x=xva, val_y=yva, Cs=[1e-3, 1.0])
    cfg = res.config
    assert cfg["n_refit"] == len(xtr) + len(xva) and cfg["n_fit"] == len(xtr) and cfg["n_test"] == len(xte)
    # the same model fitted directly: z-scored with train + val statistics, one binary model per label
    xall = np.concatenate([xtr, xva]).astype(np.float64)
    yall = np.concatenate([ytr, yva])
    mean, std = xall.mean(0), xall.std(0)
    # 100 training items, 120 features: "auto" fits with lbfgs (more features than items)
    assert "lbfgs" in res.config["solver"]
    expected = np.stack([LogisticRegression(C=res.selected_C, max_iter=1000).fit((xall - mean) / std, yall[:, j])
                         .decision_function((xte.astype(np.float64) - mean) / std) for j in range(3)], 1)
    np.testing.assert_allclose(res.scores.numpy(), expected, rtol=1e-6, atol=1e-6)
    metrics, _ = classification_metrics(torch.from_numpy(expected), torch.from_numpy(yte))
    assert res.metrics["mAP_macro"] == pytest.approx(metrics["mAP_macro"])
    # ... which is not the model of the training items alone
    mtr, str_ = xtr.astype(np.float64).mean(0), xtr.astype(np.float64).std(0)
    train_only = LogisticRegression(C=res.selected_C, max_iter=1000).fit((xtr - mtr) / str_, ytr[:, 0])
    assert not np.allclose(train_only.decision_function((xte - mtr) / str_), res.scores[:, 0].numpy(), atol=1e-3)


def newton_logistic(x: np.ndarray, y: np.ndarray, c: float, steps: int = 50) -> np.ndarray:
    """Plain Newton iterations on ``C·Σ logloss + ½‖w‖²`` (intercept unpenalised); returns ``(w, b)`` stacked."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    theta = np.zeros(xb.shape[1])
    penalty = np.eye(xb.shape[1]) / c
    penalty[-1, -1] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-xb @ theta))
        grad = xb.T @ (p - y) + penalty @ theta
        hess = xb.T @ (xb * (p * (1 - p))[:, None]) + penalty
        theta -= np.linalg.solve(hess, grad)
    return theta


def test_multilabel_fits_reach_the_optimum_where_lbfgs_stops_short():
    """Weakly regularised, nearly separable, correlated features: the default solver lands on the
    optimum of each class's objective (a plain Newton loop), scikit-learn's default L-BFGS does not.
    """
    rng = np.random.default_rng(3)
    mix = rng.normal(size=(60, 60)) * np.logspace(0, -2, 60)  # badly conditioned features
    x = rng.normal(size=(400, 60)) @ mix
    y = np.stack([(x @ rng.normal(size=60) + 0.3 * rng.normal(size=400)) > 0 for _ in range(2)], 1).astype(float)
    c = 100.0
    res = train_logistic_probe(x, y, x, y, val_x=x, val_y=y, Cs=[c])
    xs = (x - x.mean(0)) / x.std(0)
    # the refit sees train + validation, here x twice: the summed log-loss doubles, i.e. C doubles
    expected = np.stack([np.hstack([xs, np.ones((400, 1))]) @ newton_logistic(xs, y[:, j], 2 * c) for j in range(2)], 1)
    np.testing.assert_allclose(res.scores.numpy(), expected, atol=1e-3 * np.abs(expected).max())
    assert res.config["convergence_warnings"] == 0 and "newton-cholesky" in res.config["solver"]
    # more features than items: a Newton step would factorise a D × D Hessian, L-BFGS is used
    wide = train_logistic_probe(x[:40], y[:40], x, y, val_x=x[40:80], val_y=y[40:80], Cs=[1.0])
    assert "lbfgs" in wide.config["solver"]
    # scikit-learn's default L-BFGS stops (its gradient tolerance met, no warning) well short of it
    short = train_logistic_probe(x, y, x, y, val_x=x, val_y=y, Cs=[c], solver="lbfgs")
    assert np.abs(short.scores.numpy() - expected).max() > 1e-2 * np.abs(expected).max()


def test_single_label_multinomial_with_an_absent_class_and_held_out_groups():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 8)) * 3
    y = np.repeat([0, 1, 2], 40)
    x = centres[y] + rng.normal(size=(len(y), 8))
    groups = np.arange(len(y)) // 4  # four items per group
    te_y = np.array([0, 1, 2, 3] * 5)  # class 3 never occurs in training
    te_x = np.concatenate([centres, rng.normal(size=(1, 8))])[te_y] + rng.normal(size=(20, 8)) * 0.1
    res = train_logistic_probe(x, y, te_x, te_y, num_classes=4, train_groups=groups, Cs=[0.01, 1.0],
                               bootstrap={"n_resamples": 100})
    assert res.config["selection_metric"] == "OA" and res.config["n_refit"] == len(y)
    assert "held-out 0.2 of the training groups" in res.config["validation"]
    p = res.scores.numpy()
    assert p.shape == (20, 4) and np.allclose(p.sum(1), 1) and np.all(p[:, 3] == 0)
    assert res.metrics["OA"] == pytest.approx(15 / 20)  # every class-3 item is wrong, the rest right
    iv = res.to_dict()["intervals"]["metrics"]["OA"]
    assert iv["n_resamples"] == 100 and iv["point"] == pytest.approx(0.75)
    assert iv["low"] <= 0.75 <= iv["high"] and iv["high"] - iv["low"] > 0.1
    json.dumps(res.to_dict())  # JSON-ready


def test_multilabel_constant_class_and_holdout_split():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 4))
    y = np.zeros((30, 3), np.float32)
    y[:, 0] = x[:, 0] > 0
    y[:, 2] = 1  # always present in training
    res = train_logistic_probe(x, y, x[:5], y[:5], Cs=[1.0])
    assert np.all(res.scores[:, 1].numpy() == -CONSTANT_LOGIT) and np.all(res.scores[:, 2].numpy() == CONSTANT_LOGIT)
    fit, val = holdout_split(30, 0.2, seed=0, groups=np.arange(30) // 3)
    assert len(val) == 6 and sorted(np.concatenate([fit, val]).tolist()) == list(range(30))
    assert set((val // 3).tolist()).isdisjoint((fit // 3).tolist())  # groups are held out whole
    with pytest.raises(ValueError, match="val_x"):
        train_logistic_probe(x, y, val_x=x)


def test_cli_protocol_logistic(shared_data, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.chdir(tmp_path)  # the feature cache goes to ./.cache
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", "pixels", "--task", "bigearthnet_v1",
                                      "--opt", f"root={shared_data / 'bigearthnet_v1'}", "--opt", "size=16",
                                      "--protocol", "logistic", "--no-baselines", "--device", "cpu",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "results.json").read_text())
    block = saved["checkpoints"]["pixels"]["logistic"]
    assert block["config"]["Cs"] == list(DEFAULT_CS) and block["intervals"]["n_resamples"] == 1000
    assert "logistic mAP_macro" in (out / "results.md").read_text()
