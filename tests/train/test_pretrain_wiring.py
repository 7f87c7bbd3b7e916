"""Wiring of the pretraining step (train/pretrain.py).

* MoCo v2 symmetrised: both directions use the queue as it was at the start of the step, and the
  keys of both views are enqueued once, after both.
* For every loss of the registry: the loss the step reports equals the loss module called directly,
  in the test, on the embeddings the step produced and on labels read from the archive for the
  batch's patches (with the queue state the test expects); the embeddings come from the right views
  (online: Siamese-masked view, target: full view, one branch per modality in cross-modal mode).
* The exported backbone reproduces the in-memory backbone's features.

The step is observed through spies (the data loader, ``PretrainModel.forward``, ``build_loss``), not
re-implemented: the test builds the expected inputs of each loss itself from the batch.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
from archive_helpers import synthetic_archive

import train.pretrain as pretrain
from pipeline.store import STATUS_DONE
from train.data import EpochDataLoader
from train.losses import LOSSES, MoCoV2Loss, build_loss
from train.models import random_patch_mask, zero_masked_patches

B = 8  # batch size of the wiring runs
PROJ = 32  # projection width


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A tiny curated archive whose labels are then rewritten at random (1–3 of the 9 classes per item,
    random fractions), so that which patch gets which labels changes every label-aware loss.
    """
    path = tmp_path_factory.mktemp("wiring-archive") / "a.zarr"
    synthetic_archive(path, n_locations=8, size_px=32, patches_per_shard=4)
    g = zarr.open_group(str(path), mode="r+")
    rng = np.random.default_rng(0)
    shape = g["multi_hot"].shape  # [patch, season, class]
    multi_hot = np.zeros(shape, np.uint8)
    for index in np.ndindex(*shape[:2]):
        multi_hot[index][rng.choice(shape[2], size=rng.integers(1, 4), replace=False)] = 1
    fraction = multi_hot * rng.uniform(0.1, 1.0, size=shape)
    g["multi_hot"][:] = multi_hot
    g["label_fraction"][:] = (fraction / fraction.sum(axis=2, keepdims=True)).astype(np.float32)
    return str(path)


def config(archive: str, out, **kw) -> pretrain.PretrainConfig:
    base = dict(archive=archive, output_dir=str(out), splits="all", crop_size=32, batch_size=B, num_workers=0,
                proj_hidden=64, proj_out=PROJ, pred_hidden=64, epochs=1, max_steps_per_epoch=2,
                warmup_epochs=0.5, log_every=1000, mask_ratio=0.5, bn_recalibration_batches=0)
    base.update(kw)
    return pretrain.PretrainConfig.model_validate(base)


class Spy:
    """What a run did: the batches it drew (in order), each forward's inputs and outputs with a copy of
    the model just before it, the loss module (and a copy as built), and the last model.
    """

    def __init__(self):
        self.batches: list[dict] = []
        self.forwards: list[dict] = []
        self.loss_fn = None
        self.loss_built = None
        self.model = None


@pytest.fixture
def spy(monkeypatch) -> Spy:
    s = Spy()
    real_build_dataloader = pretrain.build_dataloader
    real_forward = pretrain.PretrainModel.forward
    real_build_loss = pretrain.build_loss

    class RecordingLoader(EpochDataLoader):
        def __iter__(self):
            for batch in super().__iter__():
                s.batches.append(batch)
                yield batch

    def build_dataloader(*args, **kwargs):
        loader = real_build_dataloader(*args, **kwargs)
        loader.__class__ = RecordingLoader
        return loader

    def forward(self, v1, v2, mask_seed):
        before = copy.deepcopy(self)
        z, q, k = real_forward(self, v1, v2, mask_seed)
        s.model = self

        def keep(t):
            return tuple(x.detach().clone() for x in t)

        s.forwards.append({"model": before, "v1": v1.clone(), "v2": v2.clone(), "mask_seed": mask_seed,
                           "z": keep(z), "q": keep(q), "k": keep(k)})
        return z, q, k

    def build_loss(name, **kwargs):
        fn = real_build_loss(name, **kwargs)
        s.loss_fn, s.loss_built = fn, copy.deepcopy(fn)
        return fn

    monkeypatch.setattr(pretrain, "build_dataloader", build_dataloader)
    monkeypatch.setattr(pretrain.PretrainModel, "forward", forward)
    monkeypatch.setattr(pretrain, "build_loss", build_loss)
    return s


def archive_labels(archive: str, batch: dict, key: str = "multi_hot") -> torch.Tensor:
    """Label rows of the batch's (patch, season) items, read from the archive (not from the batch)."""
    arr = zarr.open_group(archive, mode="r")[key]
    rows = [np.asarray(arr[int(p), int(s)], np.float32) for p, s in zip(batch["location"], batch["season"])]
    return torch.from_numpy(np.stack(rows))


# ============================================================================ 1. MoCo v2 symmetrised
def plain_moco_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE of each q_i against its positive k_i and every queue row, written out as a loop."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(q.shape[0]):
        qi = q[i].double() / q[i].double().norm()
        ki = k[i].double() / k[i].double().norm()
        logits = [torch.dot(qi, ki) / tau] + [torch.dot(qi, n.double()) / tau for n in queue]
        logits = torch.stack(logits)
        total = total + torch.logsumexp(logits, 0) - logits[0]
    return total / q.shape[0]


def test_moco_v2_symmetric_step_uses_the_queue_of_the_start_of_the_step():
    torch.manual_seed(0)
    loss_fn = MoCoV2Loss(dim=6, queue_size=20, temperature=0.2)
    queue_before = loss_fn.queue.features.clone()
    z = (torch.randn(4, 6), torch.randn(4, 6))
    k = (torch.randn(4, 6), torch.randn(4, 6))
    q = (torch.randn(4, 6), torch.randn(4, 6))  # predictions: MoCo v2 has no predictor, must not be used
    calls = []
    real_forward = loss_fn.forward

    def forward(*args, **kwargs):  # one call per direction
        out = real_forward(*args, **kwargs)
        calls.append(out.detach())
        return out

    loss_fn.forward = forward
    total = pretrain.compute_loss("moco_v2", loss_fn, z, q, k, torch.zeros(4, 9))
    first = plain_moco_infonce(z[0], k[1], queue_before, 0.2)
    second = plain_moco_infonce(z[1], k[0], queue_before, 0.2)
    assert len(calls) == 2
    torch.testing.assert_close(calls[1].double(), second, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total.double(), first + second, rtol=1e-5, atol=1e-6)
    # both views' keys, each exactly once, the rest of the queue untouched
    after = loss_fn.queue.features
    keys = F.normalize(torch.cat([k[0], k[1]]), dim=1)
    matches = (torch.cdist(keys, after) < 1e-5).sum(dim=1)
    assert matches.tolist() == [1] * 8
    torch.testing.assert_close(after[8:], queue_before[8:])
    assert int(loss_fn.queue.ptr) == 8


# ============================================================================ 3. every loss, through the step
# (name, options, label key); options complete enough that the test can build the same module itself
CASES = [
    ("infonce", {"temperature": 0.2}, "multi_hot"),
    ("softcon", {"temperature": 0.2, "lam": 1.0, "soft_term": "bce"}, "multi_hot"),
    ("softcon", {"temperature": 0.2, "lam": 1.0, "soft_term": "soft_ce"}, "label_fraction"),
    ("mulsupcon", {"temperature": 0.1}, "multi_hot"),
    ("mulsupcon", {"temperature": 0.1, "queue_size": 2 * B, "num_classes": 9, "dim": PROJ}, "multi_hot"),
    ("moco_v2", {"temperature": 0.2, "queue_size": 4 * B, "dim": PROJ}, "multi_hot"),
    ("moco_v3", {"temperature": 0.2}, "multi_hot"),
    ("byol", {}, "multi_hot"),
    ("ntxent", {"temperature": 0.2}, "multi_hot"),
    ("simclr", {"temperature": 0.2}, "multi_hot"),
    ("supcon", {"temperature": 0.2}, "multi_hot"),
    ("macl", {}, "multi_hot"),
    ("triplet", {}, "multi_hot"),
]
LABELLED = {"softcon", "mulsupcon", "supcon", "macl", "triplet"}


def test_cases_cover_the_registry():
    assert {name for name, _, _ in CASES} == set(LOSSES)


def macl_class_counts(archive: str) -> tuple[torch.Tensor, int]:
    """MACL's training statistics from the archive: multi-hot counts over every season of the done patches."""
    g = zarr.open_group(archive, mode="r")
    done = np.flatnonzero(g["status"][:] == STATUS_DONE)
    mh = np.asarray(g["multi_hot"][:], np.float64)[done]  # [P, S, C]
    return torch.from_numpy(mh.sum(axis=(0, 1))), mh.shape[0] * mh.shape[1]


def expected_step_loss(name: str, fn, z, q, k, y) -> torch.Tensor:
    """Each method's rule, index = view (0: view 1): predictions of one view against the targets of the
    other for the MoCo-v3-shaped losses; MoCo v2: online projections against the other view's targets
    and the queue (both directions with the queue of the start of the step); in-batch losses: the
    online projections of both views.
    """
    if name in {"infonce"}:
        return fn(q[0], k[1]) + fn(q[1], k[0])
    if name in {"softcon"}:
        return fn(q[0], k[1], y) + fn(q[1], k[0], y)
    if name == "mulsupcon":
        return fn(q[0], k[1], y, update_queue=False) + fn(q[1], k[0], y, update_queue=False)
    if name == "moco_v2":
        return fn(z[0], k[1], update_queue=False) + fn(z[1], k[0], update_queue=False)
    if name in {"moco_v3", "byol"}:
        return fn(q[0], q[1], k[0], k[1])
    if name in {"ntxent", "simclr"}:
        return fn(z[0], z[1])
    return fn(torch.stack([z[0], z[1]], dim=1), y)  # supcon, macl, triplet


@pytest.mark.parametrize("name, options, label_key", CASES,
                         ids=[f"{n}-{'-'.join(map(str, o.values()))}-{lk}" for n, o, lk in CASES])
def test_step_feeds_each_loss_the_right_tensors(archive, tmp_path, spy, name, options, label_key):
    labels_kind = "multi_hot" if label_key == "multi_hot" else "fraction"
    cfg = config(archive, tmp_path / "run", loss={"name": name, "labels": labels_kind, "options": options})
    res = pretrain.run_pretraining(cfg, progress=False)
    assert len(res["losses"]) == 2 and len(spy.forwards) == 2 and len(spy.batches) >= 2

    kwargs = dict(options)
    if name == "macl":  # the class counts of the training data, from the archive
        kwargs["class_counts"], kwargs["num_samples"] = macl_class_counts(archive)
    fresh = build_loss(name, **kwargs)
    if name == "moco_v2":  # the random initial queue the run started from
        fresh.load_state_dict(spy.loss_built.state_dict())
    queue_keys: list[torch.Tensor] = []
    queue_labels: list[torch.Tensor] = []
    for step in range(2):
        batch, rec = spy.batches[step], spy.forwards[step]
        assert torch.equal(rec["v1"], batch["view1"]) and torch.equal(rec["v2"], batch["view2"])
        y = archive_labels(archive, batch, label_key)
        z, q, k = rec["z"], rec["q"], rec["k"]
        if name == "moco_v2" and step == 1:  # the first step's keys, both views, were enqueued at 0..2B
            fresh.queue.features[: 2 * B] = F.normalize(torch.cat(queue_keys), dim=1)
        if name == "mulsupcon" and fresh.queue is not None and step == 1:  # the queue is full of them
            fresh.queue.features.copy_(torch.cat(queue_keys))
            fresh.queue.labels.copy_(torch.cat(queue_labels))
            fresh.queue.count.fill_(2 * B)
        with torch.no_grad():
            expected = float(expected_step_loss(name, fresh, z, q, k, y))
        assert res["losses"][step] == pytest.approx(expected, rel=1e-5, abs=1e-6), (step, res["losses"], expected)
        if name in LABELLED and step == 0:  # labels of other patches would give another loss
            with torch.no_grad():
                wrong = float(expected_step_loss(name, copy.deepcopy(fresh), z, q, k, y.roll(1, 0)))
            if not torch.equal(y, y.roll(1, 0)):
                assert abs(wrong - expected) > 1e-6
        queue_keys += [k[0], k[1]]
        queue_labels += [(y > 0).float(), (y > 0).float()]
    if name == "moco_v2":  # after two steps: 4B keys, each view's keys of each step exactly once, in order
        torch.testing.assert_close(spy.loss_fn.queue.features, F.normalize(torch.cat(queue_keys), dim=1))


@pytest.mark.parametrize("view_mode", ["same_season", "cross_modal"])
def test_step_embeddings_come_from_the_right_views(archive, tmp_path, spy, view_mode):
    """Online branch: the Siamese-masked view (mask of seed ``mask_seed + view``); target: the full view;
    in cross-modal mode view 2 goes through the second branch.
    """
    cfg = config(archive, tmp_path / "run", view_mode=view_mode, max_steps_per_epoch=1,
                 loss={"name": "infonce", "options": {}})
    pretrain.run_pretraining(cfg, progress=False)
    rec = spy.forwards[0]
    model = rec["model"]
    assert len(model.branches) == (2 if view_mode == "cross_modal" else 1)
    for view, x in enumerate((rec["v1"], rec["v2"])):
        br = model.branches[min(view, len(model.branches) - 1)]
        assert x.shape[1] == (2 if view == 1 and view_mode == "cross_modal" else 13)
        gh, gw = br.online.mask_grid(x.shape[-2], x.shape[-1])
        gen = torch.Generator().manual_seed(rec["mask_seed"] + view)
        mask = random_patch_mask(x.shape[0], gh, gw, 0.5, generator=gen)
        assert mask.any()
        with torch.no_grad():
            k = br.target(x)
            z = br.online.projector(br.online.backbone(zero_masked_patches(x, mask, br.online.mask_patch_size)))
            q = br.online.predictor(z)
            z_unmasked = br.online.projector(br.online.backbone(x))
        torch.testing.assert_close(rec["k"][view], k, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(rec["z"][view], z, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(rec["q"][view], q, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(rec["z"][view], z_unmasked, atol=1e-3)


# ============================================================================ the exported backbone
def test_exported_backbone_reproduces_the_in_memory_backbone(archive, tmp_path, spy):
    from safetensors import safe_open

    from train.evaluate.features import load_backbone_for_eval

    out = tmp_path / "run"
    pretrain.run_pretraining(config(archive, out, bn_recalibration_batches=2), progress=False)
    with safe_open(str(out / "backbone.safetensors"), "pt") as f:
        assert f.metadata()["bn_statistics"].startswith("recalibrated on 2 unmasked training batches")
    exported = load_backbone_for_eval(str(out / "backbone.safetensors"), in_chans=13, band_names=None)
    in_memory = spy.model.branches[0].online.backbone.eval()
    x = torch.cat([spy.batches[0]["view1"], spy.batches[-1]["view2"]])
    with torch.no_grad():
        torch.testing.assert_close(exported(x), in_memory(x), rtol=1e-5, atol=1e-5)



def _view_settings(transform) -> dict:
    """The random choices of a multispectral view recipe, by transform class."""
    return {type(t).__name__: (t.scale if hasattr(t, "scale") else t.p) for t in transform.transforms}


def test_augment_overrides_reach_both_views_and_bad_keys_are_refused(archive, tmp_path):
    default, _ = pretrain._build_data(config(archive, tmp_path / "a"), 0, 1)
    assert _view_settings(default.transforms1)["RandomGrayscale"] == 0.2
    assert _view_settings(default.transforms1)["RandomGaussianBlur"] == 1.0
    assert _view_settings(default.transforms2)["RandomGaussianBlur"] == 0.1
    spectral = {"jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "scale": [0.5, 1.0]}
    ds, _ = pretrain._build_data(config(archive, tmp_path / "b", augment=spectral), 0, 1)
    for view in (ds.transforms1, ds.transforms2):
        got = _view_settings(view)
        assert got["RandomBrightnessContrast"] == got["RandomGrayscale"] == got["RandomGaussianBlur"] == 0.0
        assert tuple(got["RandomResizedCrop"]) == (0.5, 1.0) and got["RandomHorizontalFlip"] == 0.5
    for bad, match in [({"gray": 0.1}, "unknown key"), ({"gray_p": 2}, "probability"), ({"scale": [0.5]}, "scale")]:
        with pytest.raises(ValueError, match=match):
            config(archive, tmp_path / "d", augment=bad)
