"""Downstream evaluators: linear probe, kNN, fine-tuning, retrieval, feature cache, report, end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.utils.data import Dataset

from train.data import Normalizer
from train.evaluate.features import extract_features, load_backbone_for_eval
from train.evaluate.finetune import finetune
from train.evaluate.knn import knn_evaluate, knn_scores
from train.evaluate.metrics import (
    imbriaco_split,
    mean_average_precision,
    overall_accuracy,
    retrieval_metrics,
    retrieval_metrics_per_query,
)
from train.evaluate.probe import train_linear_probe
from train.evaluate.report import write_report
from train.evaluate.retrieval import (
    evaluate_retrieval,
    plot_retrieval_examples,
    rank_database,
)
from train.evaluate.run import build_splits, evaluate, parse_task_options

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- helpers
class TinyImages(Dataset):
    """Images whose label is carried by the brightness of the first channel (an easy task)."""

    def __init__(self, n: int = 32, chans: int = 4, size: int = 16, seed: int = 0, tag: str = "a",
                 multilabel: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.bands = tuple(["B4", "B3", "B2", "B8"][:chans])
        self.tag = tag
        self.multilabel = multilabel
        self.y = torch.randint(0, 2, (n,), generator=g)
        self.x = torch.rand(n, chans, size, size, generator=g)
        self.x[:, 0] += 1.5 * self.y.view(-1, 1, 1).float()
        self.ids = [f"{tag}{i}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        label = torch.stack([self.y[i], 1 - self.y[i]]).float() if self.multilabel else int(self.y[i])
        return {"image": self.x[i], "label": label, "id": self.ids[i]}


def _separable(n: int, d: int = 24, c: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, c, generator=g)
    x = torch.randn(n, d, generator=g)
    return x, x @ w


# --------------------------------------------------------------------------- linear probe
def test_probe_multilabel_separable_high_and_shuffled_chance():
    x, s = _separable(600)
    y = (s > 0.5).float()
    tr, te = slice(0, 400), slice(400, 600)
    res = train_linear_probe(x[tr], y[tr], x[te], y[te], epochs=60, lr=1e-2, batch_size=128)
    assert res.metrics["mAP_macro"] > 0.95 and res.metrics["mAP_micro"] > 0.95
    assert res.metrics["F1_micro"] > 0.85 and len(res.per_class_ap) == 5
    assert res.metrics["mAP_macro"] == pytest.approx(mean_average_precision(res.scores, y[te], "macro"))
    assert res.train_losses[-1] < res.train_losses[0]
    shuffled = y[tr][torch.randperm(400, generator=torch.Generator().manual_seed(1))]
    chance = train_linear_probe(x[tr], shuffled, x[te], y[te], epochs=60, lr=1e-2, batch_size=128)
    prevalence = float(y[te].mean(0).mean())
    assert abs(chance.metrics["mAP_macro"] - prevalence) < 0.12, (chance.metrics, prevalence)
    again = train_linear_probe(x[tr], y[tr], x[te], y[te], epochs=60, lr=1e-2, batch_size=128)
    assert torch.equal(again.scores, res.scores)  # seeded, deterministic


def test_probe_single_label_separable_high_and_shuffled_chance():
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 4, (800,), generator=g)
    x = 1.5 * torch.randn(4, 24, generator=g)[y] + torch.randn(800, 24, generator=g)  # 4 separated clusters
    tr, te = slice(0, 500), slice(500, 800)
    res = train_linear_probe(x[tr], y[tr], x[te], y[te], epochs=100, lr=[1e-1, 1e-3], batch_size=None)
    assert res.metrics["OA"] > 0.95 and res.config["selected_lr"] == 1e-1 and len(res.lr_search) == 2
    assert res.metrics["OA"] == pytest.approx(overall_accuracy(res.scores, y[te]))
    shuffled = y[tr][torch.randperm(500, generator=torch.Generator().manual_seed(3))]
    chance = train_linear_probe(x[tr], shuffled, x[te], y[te], epochs=100, lr=1e-1, batch_size=None)
    assert abs(chance.metrics["OA"] - 0.25) < 0.1, chance.metrics


# --------------------------------------------------------------------------- kNN
def _slow_knn(train_x, train_y, test_x, k, t):
    out = []
    for q in test_x.double():
        sims = [(float(torch.dot(q / q.norm(), r.double() / r.double().norm())), j) for j, r in enumerate(train_x)]
        sims.sort(key=lambda p: (-p[0], p[1]))
        top = sims[:k]
        w = [math.exp(s / t) for s, _ in top]
        score = sum(wi * train_y[j].double() for wi, (_, j) in zip(w, top)) / sum(w)
        out.append(score)
    return torch.stack(out)


def test_knn_matches_slow_loop_multilabel_and_single_label():
    g = torch.Generator().manual_seed(0)
    tr_x, te_x = torch.randn(50, 8, generator=g), torch.randn(13, 8, generator=g)
    tr_y = (torch.rand(50, 4, generator=g) < 0.4).float()
    fast = knn_scores(tr_x, tr_y, te_x, k=[5, 60], temperature=0.1, chunk_size=4)
    assert torch.allclose(fast[5].double(), _slow_knn(tr_x, tr_y, te_x, 5, 0.1), atol=1e-5)
    assert torch.allclose(fast[60].double(), _slow_knn(tr_x, tr_y, te_x, 50, 0.1), atol=1e-5)  # k clipped
    cls = torch.randint(0, 3, (50,), generator=g)
    single = knn_scores(tr_x, cls, te_x, k=7, temperature=0.07, chunk_size=5)
    slow = _slow_knn(tr_x, torch.nn.functional.one_hot(cls, 3), te_x, 7, 0.07)
    assert torch.allclose(single.double(), slow, atol=1e-5)
    te_cls = torch.randint(0, 3, (13,), generator=g)
    res = knn_evaluate(tr_x, cls, te_x, te_cls, k=(7,), temperature=0.07)
    assert res["metrics"]["OA"] == pytest.approx(overall_accuracy(slow, te_cls))
    te_y = (torch.rand(13, 4, generator=g) < 0.4).float()
    ml = knn_evaluate(tr_x, tr_y, te_x, te_y, k=(5, 20), temperature=0.1)
    assert ml["metrics"]["k"] == 20 and set(ml["by_k"]) == {"5", "20"}
    assert ml["by_k"]["5"]["mAP_macro"] == pytest.approx(mean_average_precision(fast[5], te_y, "macro"))


# --------------------------------------------------------------------------- fine-tuning
def test_finetune_runs_and_lowers_train_loss():
    torch.manual_seed(0)
    model = load_backbone_for_eval("random:resnet18", 4, ["B4", "B3", "B2", "B8"], seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, test = TinyImages(48, seed=0), TinyImages(16, seed=1, tag="t")
    res = finetune(model, train, test, num_classes=2, multilabel=False, epochs=4, lr=1e-3, head_lr=1e-2,
                   batch_size=16, seed=0, weight_decay=0.0)
    assert len(res["train_losses"]) == 4 and all(math.isfinite(v) for v in res["train_losses"])
    assert res["train_losses"][-1] < res["train_losses"][0], res["train_losses"]
    assert 0.0 <= res["metrics"]["OA"] <= 1.0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the caller's copy is untouched
    ml = finetune(model, TinyImages(16, multilabel=True), TinyImages(8, seed=2, multilabel=True), num_classes=2,
                  multilabel=True, epochs=1, batch_size=8, bootstrap={"n_resamples": 50},
                  test_groups=[0, 0, 1, 1, 2, 2, 3, 3])
    assert "mAP_macro" in ml["metrics"]
    iv = ml["intervals"]  # fine-tuning is reported with bootstrap intervals like the other protocols
    assert iv["resampled"] == "groups" and iv["n_units"] == 4
    assert iv["metrics"]["mAP_micro"]["point"] == pytest.approx(ml["metrics"]["mAP_micro"])
    m = ml["metrics"]["mAP_micro"]
    assert iv["metrics"]["mAP_micro"]["low"] <= m + 1e-9 and m - 1e-9 <= iv["metrics"]["mAP_micro"]["high"]
    with pytest.raises(ValueError, match="no parameters"):
        finetune(load_backbone_for_eval("pixels", 4, None), train, test, num_classes=2, multilabel=False)


# --------------------------------------------------------------------------- retrieval
def test_retrieval_wiring_equals_direct_metrics(tmp_path):
    g = torch.Generator().manual_seed(5)
    feats = torch.randn(60, 8, generator=g)
    labels = (torch.rand(60, 5, generator=g) < 0.35).float()
    labels[:, 0] = 1.0  # everyone shares class 0 → every query has a relevant item
    res = evaluate_retrieval(feats, labels, seed=3, ks=(5, "all"))
    q, d = imbriaco_split(60, 0.2, 3)
    direct = retrieval_metrics(feats[q], labels[q], feats[d], labels[d], ks=(5, "all"))
    for key, value in direct.items():
        assert res["metrics"][key] == pytest.approx(value, nan_ok=True), key
    _, n_hard = retrieval_metrics_per_query(feats[q], labels[q], feats[d], labels[d], ks=(1,), relevance="jaccard",
                                            jaccard_threshold=0.8)
    keep = q[n_hard > 0]
    easy = retrieval_metrics(feats[keep], labels[keep], feats[d], labels[d], ks=("all", 10), relevance="jaccard",
                             jaccard_threshold=0.4)
    assert res["metrics"]["levels_n_queries"] == len(keep) > 0
    assert res["metrics"]["easy/mAP@all"] == pytest.approx(easy["mAP@all"])
    assert res["metrics"]["easy/P@10"] == pytest.approx(easy["P@10"])
    multi = evaluate_retrieval(feats, labels, seed=[3, 4], ks=(5,), imbriaco_levels=False)
    q4, d4 = imbriaco_split(60, 0.2, 4)
    m4 = retrieval_metrics(feats[q4], labels[q4], feats[d4], labels[d4], ks=(5,))
    assert multi["metrics"]["mAP@5"] == pytest.approx((direct["mAP@5"] + m4["mAP@5"]) / 2)
    assert multi["metrics"]["mAP@5_std"] == pytest.approx(abs(direct["mAP@5"] - m4["mAP@5"]) / 2)
    single = evaluate_retrieval(feats, labels.argmax(1), seed=3, ks=(5,), imbriaco_levels=False)
    onehot = torch.nn.functional.one_hot(labels.argmax(1), 5)
    assert single["metrics"]["mAP@5"] == pytest.approx(
        retrieval_metrics(feats[q], onehot[q], feats[d], onehot[d], ks=(5,))["mAP@5"])

    ds = TinyImages(12, chans=3, size=8)
    f = torch.randn(12, 4, generator=g)
    ranked = rank_database(f, [0, 1], list(range(2, 12)), k=3)
    assert ranked.shape == (2, 3) and int(ranked.min()) >= 2
    rel = torch.tensor([[True, False, True], [False, False, True]])
    png = plot_retrieval_examples(ds, [0, 1], ranked, rel, tmp_path / "ex.png")
    assert png.read_bytes()[:8] == PNG_MAGIC


# --------------------------------------------------------------------------- feature cache
def test_feature_cache_hit_skips_forward(tmp_path):
    model = load_backbone_for_eval("random:resnet18", 4, None, seed=0)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    ds = TinyImages(10)
    f1, y1 = extract_features(model, ds, batch_size=4, cache_dir=tmp_path, cache_name="tiny-train")
    assert f1.shape == (10, 512) and y1.dtype == torch.int64 and len(calls) == 3
    f2, y2 = extract_features(model, ds, batch_size=4, cache_dir=tmp_path, cache_name="tiny-train")
    assert len(calls) == 3 and torch.equal(f1, f2) and torch.equal(y1, y2)
    assert len(list(tmp_path.glob("tiny-train-*.safetensors"))) == 1
    extract_features(model, TinyImages(10, tag="other"), batch_size=4, cache_dir=tmp_path)  # other ids: miss
    assert len(calls) == 6
    same = load_backbone_for_eval("random:resnet18", 4, None, seed=0)  # same fingerprint → hit, equal weights
    same.register_forward_hook(lambda *_: calls.append(1))
    f3, _ = extract_features(same, ds, batch_size=4, cache_dir=tmp_path, cache_name="tiny-train")
    assert len(calls) == 6 and torch.equal(f1, f3)
    assert torch.allclose(extract_features(same, ds, batch_size=4, cache_dir=None)[0], f1, atol=1e-5)
    pix = load_backbone_for_eval("pixels", 4, None)
    fp, _ = extract_features(pix, ds, cache_dir=None)
    assert fp.shape == (10, 8) and torch.allclose(fp[:, :4], ds.x.mean((2, 3)), atol=1e-6)


# --------------------------------------------------------------------------- report
def test_report_writes_json_markdown_and_charts(tmp_path):
    rows = {}
    for i, name in enumerate(["run-a", "random:resnet18", "pixels"]):
        rows[name] = {"checkpoint": name, "kind": "x", "backbone": "resnet18", "feature_dim": 512, "notes": [],
                      "linear": {"metrics": {"mAP_macro": 0.5 + 0.1 * i, "mAP_micro": float("nan")},
                                 "per_class_ap": [0.2, None, 0.9]},
                      "knn": {"metrics": {"mAP_macro": 0.4}, "per_class_ap": [0.1, None, 0.5]},
                      "retrieval": {"metrics": {"mAP@20": 0.3, "hard/mAP@all": 0.1}}}
    rows["pixels"]["finetune"] = {"skipped": "no trainable parameters"}
    results = {"task": "archive", "classes": ["water", "trees", "grass"], "multilabel": True, "n_train": 4,
               "n_test": 2, "protocols": ["linear", "knn", "retrieval"], "checkpoints": rows}
    files = write_report(results, tmp_path)
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["checkpoints"]["run-a"]["linear"]["metrics"]["mAP_micro"] is None
    md = (tmp_path / "results.md").read_text()
    for name in rows:
        assert f"`{name}`" in md
    assert "linear mAP_macro" in md and "retrieval hard/mAP@all" in md and "70.00" in md
    assert "skipped" in md
    for proto in ("linear", "knn"):
        assert (tmp_path / f"per_class_ap_{proto}.png").read_bytes()[:8] == PNG_MAGIC
        assert f"per_class_ap_{proto}" in files
    assert not (tmp_path / "per_class_ap_retrieval.png").exists()


# --------------------------------------------------------------------------- end to end on a synthetic archive
@pytest.fixture(scope="module")
def archive(small_archive):
    return small_archive(n_locations=12, size_px=32, patches_per_shard=6, cloud_probability=0.1)


def test_evaluate_end_to_end_on_archive(archive, tmp_path):
    from train.pretrain import PretrainConfig, latest_checkpoint, run_pretraining

    run_dir = tmp_path / "softcon-tiny"
    cfg = PretrainConfig.model_validate({
        "archive": archive, "output_dir": str(run_dir), "crop_size": 32, "batch_size": 16, "num_workers": 0,
        "backbone": "resnet18",
        "proj_hidden": 64, "proj_out": 32, "pred_hidden": 64, "epochs": 1, "max_steps_per_epoch": 1, "log_every": 1000})
    run_pretraining(cfg, progress=False)
    assert (run_dir / "backbone.safetensors").is_file()

    # the exported backbone and the epoch checkpoint hold the same online weights; only the BatchNorm
    # running statistics differ (recalibrated on unmasked batches before export)
    a = load_backbone_for_eval(run_dir / "backbone.safetensors", 13, None)
    b = load_backbone_for_eval(latest_checkpoint(run_dir), 13, None)
    assert a.kind == "softcon-backbone" and b.kind == "pretrain-checkpoint" and a.modality == "s2_l1c"
    stats = ("running_mean", "running_var", "num_batches_tracked")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items() if not k.endswith(stats))
    assert a.fingerprint != load_backbone_for_eval("random:resnet18", 13, None).fingerprint

    out = tmp_path / "eval"
    res = evaluate([str(run_dir)], "archive", {"store": archive}, protocols=("linear", "knn", "retrieval", "finetune"),
                   out_dir=out, seed=0, device="cpu", baselines=True, batch_size=16, cache_dir=tmp_path / "cache",
                   probe_kwargs={"epochs": 30}, knn_kwargs={"k": (5, 10), "primary_k": 5},
                   finetune_kwargs={"epochs": 1, "max_steps_per_epoch": 2}, plot_examples=2, plot_top_k=3)
    assert list(res["checkpoints"]) == ["softcon-tiny", "random:resnet18", "pixels"]
    assert res["modality"] == "s2_l1c" and res["multilabel"] and res["n_train"] > res["n_test"] > 0
    for label, row in res["checkpoints"].items():
        assert math.isfinite(row["linear"]["metrics"]["mAP_macro"]), label
        assert math.isfinite(row["knn"]["metrics"]["mAP_micro"]), label
        assert row["retrieval"]["metrics"]["n_queries"] >= 1
        assert len(row["linear"]["per_class_ap"]) == 9
    assert res["checkpoints"]["pixels"]["feature_dim"] == 26
    assert res["checkpoints"]["pixels"]["finetune"] == {"skipped": "no trainable parameters (raw-pixel baseline)"}
    assert len(res["checkpoints"]["softcon-tiny"]["finetune"]["train_losses"]) == 1
    md = (out / "results.md").read_text()
    assert all(f"`{label}`" in md for label in res["checkpoints"])
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["checkpoints"]) == set(res["checkpoints"])
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "per_class_ap_linear.png" in pngs and "per_class_ap_finetune.png" in pngs
    assert "retrieval_examples_softcon-tiny.png" in pngs
    # our export records the scaling it was trained with (the published statistics here); "auto" uses it
    assert res["normalizer_source"] == "recorded in the checkpoint"
    assert res["normalizer"] == Normalizer.published("s2_l1c").to_dict()
    # a backbone that records its input scaling is evaluated with it (normalizer="auto")
    from safetensors.torch import load_file, save_file

    from train.evaluate.features import read_checkpoint_info
    from train.evaluate.run import _make_normalizer

    recorded = Normalizer.published("s2_l1c", mode="zscore").to_dict()
    save_file(load_file(str(run_dir / "backbone.safetensors")), str(tmp_path / "rec.safetensors"),
              metadata={"format": "softcon-backbone", "backbone": "resnet18", "modality": "s2_l1c",
                        "normalizer": json.dumps(recorded)})
    info = read_checkpoint_info(tmp_path / "rec.safetensors")
    norm, how = _make_normalizer("auto", "s2_l1c", ["B4", "B3"], [info])
    assert info["normalizer"] == recorded and norm.mode == "zscore" and norm.bands == ("B4", "B3")
    assert how == "recorded in the checkpoint"
    # a second run reuses every cached feature file (no new cache entries)
    n_cache = len(list((tmp_path / "cache").glob("*.safetensors")))
    assert n_cache == 6
    evaluate([str(run_dir)], "archive", {"store": archive}, protocols=("knn",), out_dir=tmp_path / "eval2",
             device="cpu", cache_dir=tmp_path / "cache", knn_kwargs={"k": 5}, plot_examples=0)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == n_cache


# --------------------------------------------------------------------------- real BigEarthNet v1 sample
def test_bigearthnet_v1_sample_features_and_knn(shared_data, tmp_path):
    from train.evaluate.tasks import BigEarthNetV1

    root = shared_data / "bigearthnet_v1"
    ds = BigEarthNetV1(root, modality="s2_l1c", size=32)
    model = load_backbone_for_eval("random:resnet18", len(ds.bands), ds.bands)
    norm = Normalizer.published("s2_l1c", ds.bands)
    feats, labels = extract_features(model, ds, batch_size=8, normalizer=norm, cache_dir=None)
    assert feats.shape == (len(ds), 512) and torch.isfinite(feats).all()
    assert torch.equal(labels, torch.stack([ds.label(i) for i in range(len(ds))])) and labels.shape[1] == 19
    half = len(ds) // 2
    res = knn_evaluate(feats[:half], labels[:half], feats[half:], labels[half:], k=(3,))
    assert res["metrics"]["n_classes_scored"] > 0 and len(res["per_class_ap"]) == 19

    train, test, desc = build_splits("bigearthnet_v1", {"root": root, "size": 32}, seed=0)
    assert "80/20" in desc and len(train) + len(test) == len(BigEarthNetV1(root, size=32))
    out = evaluate(["random:resnet18"], "bigearthnet_v1", {"root": str(root), "modality": "s2_l1c", "size": 32},
                   protocols=("knn",), out_dir=tmp_path / "ben", device="cpu", cache_dir=None, knn_kwargs={"k": 3})
    assert list(out["checkpoints"]) == ["random:resnet18", "pixels"] and out["n_test"] >= 1
    assert (tmp_path / "ben" / "results.md").is_file()


def test_parse_task_options():
    assert parse_task_options(["root=/data/x", "size=120", "exclude_cloud_snow=false", "fraction=0.1"]) == {
        "root": "/data/x", "size": 120, "exclude_cloud_snow": False, "fraction": 0.1}
    with pytest.raises(ValueError):
        parse_task_options(["oops"])
