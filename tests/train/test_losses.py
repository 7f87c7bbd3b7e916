"""Tests for ``train.losses``: every loss against a slow double-loop reference (value + gradients).

The references below are written independently of the package: plain Python
loops over anchors and keys with scalar torch ops, in float64, so autograd on
them gives reference gradients.  The DDP test spawns a real 2-process gloo group.
"""

from __future__ import annotations

import inspect
import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from train.losses import (
    LOSSES,
    BYOLLoss,
    InfoNCELoss,
    LossCall,
    LossContract,
    MACLLoss,
    MemoryQueue,
    MoCoV2Loss,
    MoCoV3Loss,
    MulSupConLoss,
    NTXentLoss,
    Online,
    SoftConLoss,
    SupConLoss,
    TripletLoss,
    build_loss,
    call_loss,
    gather_with_grad,
    label_cosine,
    label_jaccard,
    label_rarity,
    loss_contract,
    masked_logits,
    rank_offset,
)

DT = torch.float64
TOL = {"rtol": 1e-7, "atol": 1e-9}


# ============================================================================ reference helpers
def r_cos(a, b):
    return (a * b).sum() / (a.norm() * b.norm())


def r_lse(values):
    return torch.logsumexp(torch.stack(list(values)), dim=0)


def label_sets(labels):
    """Python sets of present classes from [B] indices (-1 = none) or a [B, C] matrix."""
    if labels is None:
        return None
    if labels.dim() == 1:
        return [set() if int(c) < 0 else {int(c)} for c in labels]
    return [{c for c in range(labels.shape[1]) if float(labels[i, c]) > 0} for i in range(labels.shape[0])]


def r_match(sets, i, j, rule="any", min_overlap=1):
    if sets is None:
        return False
    a, b = sets[i], sets[j]
    if rule == "any":
        return len(a & b) >= min_overlap
    return a == b and len(a) > 0


def zero_like_graph(*tensors):
    return sum(t.sum() for t in tensors if t.requires_grad) * 0.0


def check(ours, ref, inputs, tol=None):
    """Compare two scalars and their gradients w.r.t. ``inputs``."""
    tol = tol or TOL
    assert ours.dim() == 0 and torch.isfinite(ours)
    torch.testing.assert_close(ours, ref.to(ours.dtype), **tol)
    g_ours = torch.autograd.grad(ours, inputs, allow_unused=True)
    g_ref = torch.autograd.grad(ref, inputs, allow_unused=True)
    for x, a, b in zip(inputs, g_ours, g_ref, strict=True):
        a = torch.zeros_like(x) if a is None else a
        b = torch.zeros_like(x) if b is None else b
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, **tol)


def leaf(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=DT).requires_grad_(True)


def multi_hot(rows):
    return torch.tensor(rows, dtype=DT)


# ============================================================================ reference losses
def ref_infonce(q, k, tau, scale_2tau=True):
    b = q.shape[0]
    total = 0.0
    for i in range(b):
        logits = [r_cos(q[i], k[j]) / tau for j in range(b)]
        total = total + (r_lse(logits) - logits[i])
    return (2 * tau if scale_2tau else 1.0) * total / b


def ref_ntxent(za, zb, tau):
    z = [za[i] for i in range(za.shape[0])] + [zb[i] for i in range(zb.shape[0])]
    n, b = len(z), za.shape[0]
    total = 0.0
    for i in range(n):
        pos = (i + b) % n
        others = [r_cos(z[i], z[j]) / tau for j in range(n) if j != i]
        total = total + (r_lse(others) - r_cos(z[i], z[pos]) / tau)
    return total / n


def ref_label_sim(y, i, j, kind):
    a, b = y[i], y[j]
    if kind == "cosine":
        na, nb = math.sqrt(sum(float(x) ** 2 for x in a)), math.sqrt(sum(float(x) ** 2 for x in b))
        return sum(float(x) * float(w) for x, w in zip(a, b, strict=True)) / (na * nb)
    mn = sum(min(float(x), float(w)) for x, w in zip(a, b, strict=True))
    mx = sum(max(float(x), float(w)) for x, w in zip(a, b, strict=True))
    return mn / mx


def ref_soft_target(y, kind):
    b = y.shape[0]
    labelled = [float(y[i].sum()) > 0 for i in range(b)]
    s = [[0.0] * b for _ in range(b)]
    for i in range(b):
        for j in range(b):
            if i == j:
                s[i][j] = 1.0
            elif labelled[i] and labelled[j]:
                s[i][j] = ref_label_sim(y, i, j, kind)
    return s


def ref_softcon(q, k, y, tau, lam, term, kind="cosine", scale_2tau=True, soft_tau=None):
    soft_tau = soft_tau or tau
    b = q.shape[0]
    hard = ref_infonce(q, k, tau, scale_2tau=False)
    s = ref_soft_target(y, kind)
    soft = 0.0
    for i in range(b):
        cos = [r_cos(q[i], k[j]) for j in range(b)]
        if term == "soft_ce":
            lse = r_lse([c / tau for c in cos])
            z = sum(s[i])
            soft = soft + sum(-(s[i][j] / z) * (cos[j] / tau - lse) for j in range(b))
        elif term == "bce":
            row = 0.0
            for j in range(b):
                x = cos[j] / soft_tau
                row = row - (s[i][j] * F.logsigmoid(x) + (1 - s[i][j]) * F.logsigmoid(-x))
            soft = soft + row / b
        else:
            soft = soft + sum((cos[j] - s[i][j]) ** 2 for j in range(b)) / b
    return (2 * tau if scale_2tau else 1.0) * hard + lam * soft / b


def ref_supcon(feats, labels, tau, tau_base=None, rule="any", min_overlap=1, inst=True, mode="all"):
    tau_base = tau_base or tau
    sets = label_sets(labels)
    b, v, _ = feats.shape
    rows = [(vv, bb) for vv in range(v) for bb in range(b)]
    anchors = rows if mode == "all" else [(0, bb) for bb in range(b)]
    total, n = 0.0, 0
    for va, ba in anchors:
        others = [(vv, bb) for vv, bb in rows if (vv, bb) != (va, ba)]
        pos = [(vv, bb) for vv, bb in others if (inst and bb == ba) or r_match(sets, ba, bb, rule, min_overlap)]
        if not pos:
            continue
        logit = {o: r_cos(feats[ba, va], feats[o[1], o[0]]) / tau for o in others}
        lse = r_lse(logit.values())
        li = -sum(logit[o] - lse for o in pos) / len(pos)
        total = total + (tau / tau_base) * li
        n += 1
    return total / n if n else zero_like_graph(feats)


def ref_mulsupcon(q, k, y, tau, weighting="per_label", queue_feats=None, queue_labels=None):
    keys = [k[j] for j in range(k.shape[0])]
    sets_k = label_sets(y)
    if queue_feats is not None:
        keys += [queue_feats[j] for j in range(queue_feats.shape[0])]
        sets_k = sets_k + label_sets(queue_labels)
    sets_q = label_sets(y)
    per_label_sum, per_label_n, per_anchor_sum, per_anchor_n = 0.0, 0, 0.0, 0
    for i in range(q.shape[0]):
        logits = [r_cos(q[i], kk) / tau for kk in keys]
        lse = r_lse(logits)
        terms = []
        for c in sorted(sets_q[i]):
            members = [j for j in range(len(keys)) if c in sets_k[j]]
            terms.append(-sum(logits[j] - lse for j in members) / len(members))
        if terms:
            per_label_sum = per_label_sum + sum(terms)
            per_label_n += len(terms)
            per_anchor_sum = per_anchor_sum + sum(terms) / len(terms)
            per_anchor_n += 1
    if weighting == "per_label":
        return per_label_sum / per_label_n if per_label_n else zero_like_graph(q, k)
    return per_anchor_sum / per_anchor_n if per_anchor_n else zero_like_graph(q, k)


def ref_rarity(counts, n, floor=0.05):
    r = [math.log(n / max(c, 1)) for c in counts]
    top = max(r)
    return [max(x / top, floor) for x in r]


def ref_macl(feats, y, rarity, tau0, alpha, beta, tmin, tmax, weighting="plr", inst=True):
    sets = label_sets(y)
    c_num = y.shape[1]
    r = rarity if rarity is not None else [1.0] * c_num
    b, v, _ = feats.shape
    rows = [(vv, bb) for vv in range(v) for bb in range(b)]
    total, n = 0.0, 0
    for va, ba in rows:
        a_set = sets[ba]
        rho = sum(r[c] for c in a_set) / len(a_set) if a_set else 0.0
        others = [(vv, bb) for vv, bb in rows if (vv, bb) != (va, ba)]
        logit, weight = {}, {}
        for o in others:
            o_set = sets[o[1]]
            same = o[1] == ba
            shared = a_set & o_set
            overlap = 1.0 if same else (len(shared) / len(a_set) if a_set else 0.0)
            temp = min(max(tau0 * (1 + alpha * (1 - overlap)) / (1 + beta * rho), tmin), tmax)
            logit[o] = r_cos(feats[ba, va], feats[o[1], o[0]]) / temp
            if (inst and same) or len(shared) >= 1:
                if weighting == "uniform":
                    w = 1.0
                else:
                    w = sum(r[c] for c in shared) / len(shared) if shared else 1.0
                    if weighting == "plr_jaccard":
                        w *= 1.0 if same else len(shared) / len(a_set | o_set)
                weight[o] = w
        z = sum(weight.values())
        if not weight or z <= 0:
            continue
        lse = r_lse(logit.values())
        total = total - sum(w * (logit[o] - lse) for o, w in weight.items()) / z
        n += 1
    return total / n if n else zero_like_graph(feats)


def ref_triplet(feats, labels, margin, distance, rule="any", inst=True):
    sets = label_sets(labels)
    b, v, _ = feats.shape
    rows = [(vv, bb) for vv in range(v) for bb in range(b)]

    def dist_fn(x, w):
        x, w = x / x.norm(), w / w.norm()
        if distance == "cosine":
            return 1 - (x * w).sum()
        sq = ((x - w) ** 2).sum()
        return sq if distance == "squared_euclidean" else sq.sqrt()

    total, n = 0.0, 0
    for va, ba in rows:
        pos, neg = [], []
        for vv, bb in rows:
            if (vv, bb) == (va, ba):
                continue
            lab = r_match(sets, ba, bb, rule)
            d = dist_fn(feats[ba, va], feats[bb, vv])
            if lab or (inst and bb == ba):
                pos.append(d)
            elif not lab and bb != ba:
                neg.append(d)
        if not pos or not neg:
            continue
        hp = max(pos, key=lambda t: float(t.detach()))
        hn = min(neg, key=lambda t: float(t.detach()))
        total = total + torch.clamp(hp - hn + margin, min=0.0)
        n += 1
    return total / n if n else zero_like_graph(feats)


def ref_byol(p1, p2, z1, z2):
    b = p1.shape[0]
    a = sum(2 - 2 * r_cos(p1[i], z2[i].detach()) for i in range(b)) / b
    c = sum(2 - 2 * r_cos(p2[i], z1[i].detach()) for i in range(b)) / b
    return a + c


def ref_moco_v2(q, k, queue, tau):
    total = 0.0
    for i in range(q.shape[0]):
        logits = [r_cos(q[i], k[i]) / tau] + [r_cos(q[i], queue[m]) / tau for m in range(queue.shape[0])]
        total = total + (r_lse(logits) - logits[0])
    return total / q.shape[0]


# ============================================================================ shared data
Y_MULTI = [[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0]]
Y_FRAC = [[0.5, 0.0, 0.5, 0.0], [0.0, 0.2, 0.0, 0.8], [0.0, 0.0, 0.0, 0.0], [0.3, 0.3, 0.4, 0.0], [0.0, 0.6, 0.4, 0.0]]


# ============================================================================ common
def test_registry_and_build():
    expected = {"infonce", "ntxent", "softcon", "moco_v2", "moco_v3", "supcon", "mulsupcon", "macl", "triplet", "byol"}
    assert expected <= set(LOSSES)
    assert isinstance(build_loss("SoftCon", lam=0.5), SoftConLoss)
    assert isinstance(build_loss("moco-v3"), MoCoV3Loss)
    with pytest.raises(KeyError):
        build_loss("nope")
    with pytest.raises(ValueError):
        SoftConLoss(temperature=0.0)
    with pytest.raises(ValueError):
        SoftConLoss(soft_term="kl")
    with pytest.raises(ValueError):
        MACLLoss(alpha=-1.5)


def test_gather_identity_without_ddp():
    x = leaf(3, 4)
    assert gather_with_grad(x) is x
    assert rank_offset(3) == 0


def test_label_similarity_helpers():
    y = multi_hot(Y_FRAC)
    cos, jac = label_cosine(y, y), label_jaccard(y, y)
    for i in range(y.shape[0]):
        for j in range(y.shape[0]):
            if float(y[i].sum()) == 0 or float(y[j].sum()) == 0:
                assert float(cos[i, j]) == 0.0 and float(jac[i, j]) == 0.0
            else:
                assert math.isclose(float(cos[i, j]), ref_label_sim(y, i, j, "cosine"), rel_tol=1e-12)
                assert math.isclose(float(jac[i, j]), ref_label_sim(y, i, j, "jaccard"), rel_tol=1e-12)
    yb = multi_hot(Y_MULTI)
    jb = label_jaccard(yb, yb)
    assert math.isclose(float(jb[0, 3]), 1 / 3) and math.isclose(float(jb[0, 4]), 1 / 3)


def test_masked_logits_fp32_under_autocast():
    a = torch.randn(5, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = masked_logits(a, a, 0.07, torch.arange(5))
        loss = SoftConLoss(temperature=0.07)(a, a.flip(0), torch.tensor([0, 1, 0, 2, 1]))
    assert logits.dtype == torch.float32
    assert (logits.diagonal() < -1e8).all()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_every_loss_is_fp32_and_close_under_bf16_autocast():
    g = torch.Generator().manual_seed(7)
    q, k, f = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g), torch.randn(6, 2, 8, generator=g)
    y = torch.tensor(Y_MULTI, dtype=torch.float32)
    calls = {
        "infonce": (InfoNCELoss(0.07), (q, k)),
        "ntxent": (NTXentLoss(0.07), (q, k)),
        "softcon": (SoftConLoss(0.07, soft_term="soft_ce"), (q, k, y)),
        "supcon": (SupConLoss(0.07), (f, y)),
        "mulsupcon": (MulSupConLoss(0.07), (q, k, y)),
        "macl": (MACLLoss(), (f, y)),
        "triplet": (TripletLoss(), (f, y)),
        "byol": (BYOLLoss(), (q, k, k, q)),
    }
    for name, (fn, args) in calls.items():
        low = tuple(a.bfloat16() if a.is_floating_point() and a is not y else a for a in args)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(*low)
        exact = fn(*(a.bfloat16().float() if a.is_floating_point() and a is not y else a for a in args))
        assert out.dtype == torch.float32, name
        torch.testing.assert_close(out, exact, rtol=1e-5, atol=1e-5, msg=name)


# ============================================================================ InfoNCE / NT-Xent / MoCo v3
@pytest.mark.parametrize("tau", [0.07, 0.2, 1.0])
@pytest.mark.parametrize("b", [1, 2, 5])
def test_infonce_matches_reference(tau, b):
    q, k = leaf(b, 6, seed=1), leaf(b, 6, seed=2)
    for scale in (True, False):
        check(InfoNCELoss(tau, scale_by_2tau=scale)(q, k), ref_infonce(q, k, tau, scale), [q, k])


@pytest.mark.parametrize("tau", [0.1, 0.5])
@pytest.mark.parametrize("b", [1, 2, 4])
def test_ntxent_matches_reference(tau, b):
    za, zb = leaf(b, 5, seed=3), leaf(b, 5, seed=4)
    check(NTXentLoss(tau)(za, zb), ref_ntxent(za, zb, tau), [za, zb])


def test_ntxent_is_supcon_without_labels():
    za, zb = leaf(4, 5, seed=5), leaf(4, 5, seed=6)
    ours = NTXentLoss(0.3)(za, zb)
    torch.testing.assert_close(ours, SupConLoss(0.3)(torch.stack([za, zb], 1)), **TOL)


def test_moco_v3_is_symmetrised_infonce():
    q1, q2, k1, k2 = (leaf(4, 6, seed=s) for s in range(10, 14))
    ref = ref_infonce(q1, k2, 0.2) + ref_infonce(q2, k1, 0.2)
    check(MoCoV3Loss(0.2)(q1, q2, k1, k2), ref, [q1, q2, k1, k2])


# ============================================================================ SoftCon
@pytest.mark.parametrize("term", ["bce", "soft_ce", "mse"])
@pytest.mark.parametrize("kind", ["cosine", "jaccard"])
@pytest.mark.parametrize("tau", [0.1, 0.2])
def test_softcon_matches_reference_multi_hot(term, kind, tau):
    y = multi_hot(Y_MULTI)  # includes an unlabelled row
    q, k = leaf(6, 8, seed=20), leaf(6, 8, seed=21)
    loss = SoftConLoss(tau, lam=0.7, soft_term=term, label_similarity=kind)
    check(loss(q, k, y), ref_softcon(q, k, y, tau, 0.7, term, kind), [q, k])


@pytest.mark.parametrize("term", ["bce", "soft_ce", "mse"])
def test_softcon_fractions_and_options(term):
    y = multi_hot(Y_FRAC)
    q, k = leaf(5, 4, seed=22), leaf(5, 4, seed=23)
    loss = SoftConLoss(0.2, lam=2.0, soft_term=term, label_similarity="jaccard", scale_by_2tau=False,
                       soft_temperature=0.5)
    ref = ref_softcon(q, k, y, 0.2, 2.0, term, "jaccard", scale_2tau=False, soft_tau=0.5)
    check(loss(q, k, y), ref, [q, k])


@pytest.mark.parametrize("b", [1, 2])
def test_softcon_and_mulsupcon_tiny_batches(b):
    y = multi_hot(Y_MULTI[3 : 3 + b])
    q, k = leaf(b, 4, seed=30 + b), leaf(b, 4, seed=40 + b)
    for term in ("bce", "soft_ce", "mse"):
        check(SoftConLoss(0.2, soft_term=term)(q, k, y), ref_softcon(q, k, y, 0.2, 1.0, term), [q, k])
    check(MulSupConLoss(0.2)(q, k, y), ref_mulsupcon(q, k, y, 0.2), [q, k])


@pytest.mark.parametrize("b", [1, 2, 6])
@pytest.mark.parametrize("tau", [0.07, 0.2])
def test_softcon_lambda_zero_equals_infonce_exactly(b, tau):
    q, k = leaf(b, 8, seed=24), leaf(b, 8, seed=25)
    y = multi_hot(Y_MULTI[:b])
    for term in ("bce", "soft_ce", "mse"):
        a = SoftConLoss(tau, lam=0.0, soft_term=term)(q, k, y)
        c = InfoNCELoss(tau)(q, k)
        assert torch.equal(a, c)
        ga, gc = torch.autograd.grad(a, [q, k]), torch.autograd.grad(c, [q, k])
        assert all(torch.equal(x, z) for x, z in zip(ga, gc, strict=True))


def test_softcon_single_label_soft_ce_is_supcon_style_target():
    """Single-label batch: row-normalised cosine target = uniform over same-class keys (own key included)."""
    cls = torch.tensor([0, 1, 0, 2, 1, 0, -1])
    q, k = leaf(7, 6, seed=26), leaf(7, 6, seed=27)
    tau = 0.15
    _, soft = SoftConLoss(tau, soft_term="soft_ce").terms(q, k, cls)
    ref = 0.0
    for i in range(7):
        logits = [r_cos(q[i], k[j]) / tau for j in range(7)]
        lse = r_lse(logits)
        pos = [j for j in range(7) if j == i or (int(cls[i]) >= 0 and int(cls[i]) == int(cls[j]))]
        ref = ref - sum(logits[j] - lse for j in pos) / len(pos)
    check(soft, ref / 7, [q, k])
    # same thing as MulSupCon with one label per sample (labelled anchors only)
    labelled = cls >= 0
    qs, ks = q[labelled], k[labelled]
    _, soft_l = SoftConLoss(tau, soft_term="soft_ce").terms(qs, ks, cls[labelled])
    torch.testing.assert_close(soft_l, MulSupConLoss(tau)(qs, ks, cls[labelled]), **TOL)


def test_softcon_unlabelled_batch_soft_ce_equals_hard():
    q, k = leaf(4, 6, seed=28), leaf(4, 6, seed=29)
    hard, soft = SoftConLoss(0.2, soft_term="soft_ce").terms(q, k, torch.zeros(4, 3))
    torch.testing.assert_close(hard, soft, **TOL)


# ============================================================================ MoCo v2 + queue
def test_moco_v2_matches_reference_and_updates_queue():
    torch.manual_seed(0)
    loss_fn = MoCoV2Loss(dim=6, queue_size=7, temperature=0.2).double()
    q, k = leaf(3, 6, seed=30), leaf(3, 6, seed=31)
    loss_fn.queue.features.copy_(F.normalize(loss_fn.queue.features, dim=1))  # exact unit norm in fp64
    queue_before = loss_fn.queue.features.clone()
    check(loss_fn(q, k, update_queue=False), ref_moco_v2(q, k, queue_before, 0.2), [q, k])
    assert int(loss_fn.queue.ptr) == 0
    loss_fn(q, k)
    assert int(loss_fn.queue.ptr) == 3
    torch.testing.assert_close(loss_fn.queue.features[:3], F.normalize(k.detach(), dim=1))
    torch.testing.assert_close(loss_fn.queue.features[3:], queue_before[3:])


def test_memory_queue_fifo_wraparound():
    queue = MemoryQueue(size=5, dim=2, num_classes=1, init="empty")
    assert not queue.full and int(queue.count) == 0

    def rows(start, n):
        vals = torch.arange(start, start + n, dtype=torch.float32)
        return torch.stack([vals, -vals], 1), vals[:, None]

    queue.enqueue(*rows(0, 3))
    assert int(queue.ptr) == 3 and int(queue.count) == 3 and not queue.full
    queue.enqueue(*rows(3, 3))  # wraps: slots 3, 4, 0
    assert int(queue.ptr) == 1 and queue.full
    assert queue.features[:, 0].tolist() == [5, 1, 2, 3, 4]
    assert queue.labels[:, 0].tolist() == [5, 1, 2, 3, 4]
    queue.enqueue(*rows(10, 7))  # more than the size: keep the last 5, written from ptr 1
    assert int(queue.ptr) == 1
    assert queue.features[:, 0].tolist() == [16, 12, 13, 14, 15]
    with pytest.raises(ValueError):
        queue.enqueue(torch.zeros(2, 3), torch.zeros(2, 1))


# ============================================================================ SupCon
@pytest.mark.parametrize("tau", [0.07, 0.5])
@pytest.mark.parametrize("rule", ["any", "all"])
@pytest.mark.parametrize("mode", ["all", "one"])
def test_supcon_multilabel_matches_reference(tau, rule, mode):
    y = multi_hot(Y_MULTI)
    f = leaf(6, 2, 5, seed=40)
    loss = SupConLoss(tau, base_temperature=0.07, positive_rule=rule, contrast_mode=mode)
    check(loss(f, y), ref_supcon(f, y, tau, 0.07, rule=rule, mode=mode), [f])


def test_supcon_single_label_and_options():
    cls = torch.tensor([0, 1, 0, -1, 2])
    f = leaf(5, 3, 4, seed=41)
    check(SupConLoss(0.1)(f, cls), ref_supcon(f, cls, 0.1), [f])
    y = multi_hot(Y_MULTI)
    g = leaf(6, 2, 4, seed=42)
    loss = SupConLoss(0.1, min_overlap=2, instance_positives=False)
    check(loss(g, y), ref_supcon(g, y, 0.1, min_overlap=2, inst=False), [g])


def test_supcon_anchors_without_positives():
    # V = 1 and some unique labels: anchors 2 and 3 have no positive and are excluded
    f = leaf(4, 1, 5, seed=43)
    cls = torch.tensor([0, 0, 1, 2])
    check(SupConLoss(0.1)(f, cls), ref_supcon(f, cls, 0.1), [f])
    # nobody has a positive -> exact zero, zero gradient, no NaN
    loss = SupConLoss(0.1)(f, torch.tensor([0, 1, 2, 3]))
    assert float(loss.detach()) == 0.0
    (g,) = torch.autograd.grad(loss, [f])
    assert torch.equal(g, torch.zeros_like(f))
    # batch of one image with one view
    one = leaf(1, 1, 5, seed=44)
    loss = SupConLoss(0.1)(one, torch.tensor([0]))
    assert float(loss.detach()) == 0.0 and torch.isfinite(torch.autograd.grad(loss, [one])[0]).all()


# ============================================================================ MulSupCon
@pytest.mark.parametrize("weighting", ["per_label", "per_anchor"])
@pytest.mark.parametrize("tau", [0.1, 0.3])
def test_mulsupcon_matches_reference(weighting, tau):
    y = multi_hot(Y_MULTI)
    q, k = leaf(6, 5, seed=50), leaf(6, 5, seed=51)
    check(MulSupConLoss(tau, label_weighting=weighting)(q, k, y), ref_mulsupcon(q, k, y, tau, weighting), [q, k])


def test_mulsupcon_queue_used_once_full():
    y = multi_hot(Y_MULTI[:4])
    loss_fn = MulSupConLoss(0.1, queue_size=4, dim=5, num_classes=4).double()
    q, k = leaf(4, 5, seed=52), leaf(4, 5, seed=53)
    check(loss_fn(q, k, y, update_queue=False), ref_mulsupcon(q, k, y, 0.1), [q, k])  # empty queue ignored
    old_k = leaf(4, 5, seed=54).detach()
    loss_fn.queue.enqueue(old_k, multi_hot(Y_MULTI[2:6]))
    assert loss_fn.queue.full
    ref = ref_mulsupcon(q, k, y, 0.1, queue_feats=old_k, queue_labels=multi_hot(Y_MULTI[2:6]))
    check(loss_fn(q, k, y), ref, [q, k])
    torch.testing.assert_close(loss_fn.queue.features, k.detach())  # FIFO replaced all 4 slots


def test_mulsupcon_all_unlabelled_is_zero():
    q, k = leaf(3, 5, seed=55), leaf(3, 5, seed=56)
    loss = MulSupConLoss()(q, k, torch.zeros(3, 4))
    assert float(loss.detach()) == 0.0 and torch.isfinite(torch.autograd.grad(loss, [q])[0]).all()


# ============================================================================ MACL
@pytest.mark.parametrize("weighting", ["plr", "plr_jaccard", "uniform"])
@pytest.mark.parametrize("alpha,beta", [(0.5, 0.5), (1.0, 0.25), (-0.5, -0.5)])
def test_macl_matches_reference(weighting, alpha, beta):
    y = multi_hot(Y_MULTI)
    counts, n_train = [50, 10, 200, 3], 400
    f = leaf(6, 2, 5, seed=60)
    loss = MACLLoss(counts, n_train, tau0=0.1, alpha=alpha, beta=beta, weighting=weighting)
    ref = ref_macl(f, y, ref_rarity(counts, n_train), 0.1, alpha, beta, 0.03, 0.5, weighting)
    check(loss(f, y), ref, [f], tol={"rtol": 1e-6, "atol": 1e-8})  # rarity table is stored in fp32


def test_macl_reduces_to_supcon_and_handles_edge_cases():
    y = multi_hot(Y_MULTI)
    f = leaf(6, 2, 5, seed=61)
    macl = MACLLoss(tau0=0.1, alpha=0.0, beta=0.0, weighting="uniform")
    torch.testing.assert_close(macl(f, y), SupConLoss(0.1)(f, y), **TOL)
    check(MACLLoss(tau0=0.2)(f, y), ref_macl(f, y, None, 0.2, 0.5, 0.5, 0.03, 0.5), [f])
    # no positives at all (single view, disjoint labels) -> 0
    g = leaf(3, 1, 5, seed=62)
    loss = MACLLoss()(g, torch.eye(3, dtype=DT))
    assert float(loss.detach()) == 0.0 and torch.isfinite(torch.autograd.grad(loss, [g])[0]).all()
    r = label_rarity([1, 10, 100], 100)
    assert r.max() == 1.0 and r.min() >= 0.05 and r[0] > r[1] > r[2]


# ============================================================================ Triplet / BYOL
@pytest.mark.parametrize("distance", ["euclidean", "squared_euclidean", "cosine"])
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_triplet_matches_reference(distance, margin):
    y = multi_hot(Y_MULTI)
    f = leaf(6, 2, 5, seed=70)
    check(TripletLoss(margin, distance)(f, y), ref_triplet(f, y, margin, distance), [f])
    g = leaf(5, 1, 5, seed=71)
    cls = torch.tensor([0, 1, 0, 1, 2])
    check(TripletLoss(margin, distance, instance_positives=False)(g, cls),
          ref_triplet(g, cls, margin, distance, inst=False), [g])


def test_triplet_edge_cases():
    f = leaf(2, 2, 4, seed=72)
    check(TripletLoss(0.3)(f), ref_triplet(f, None, 0.3, "euclidean"), [f])  # instance-only, batch of 2
    g = leaf(2, 1, 4, seed=73)
    loss = TripletLoss()(g, torch.tensor([0, 0]))  # no negatives anywhere
    assert float(loss.detach()) == 0.0 and torch.isfinite(torch.autograd.grad(loss, [g])[0]).all()


@pytest.mark.parametrize("b", [1, 2, 5])
def test_byol_matches_reference(b):
    p1, p2, z1, z2 = (leaf(b, 6, seed=80 + s) for s in range(4))
    ours = BYOLLoss()(p1, p2, z1, z2)
    check(ours, ref_byol(p1, p2, z1, z2), [p1, p2, z1, z2])
    assert torch.autograd.grad(BYOLLoss()(p1, p2, z1, z2), [z1], allow_unused=True)[0] is None


# ============================================================================ real 2-process DDP (gloo)
WORLD = 2
SPLIT = [3, 2]  # unequal local batch sizes on purpose


def _ddp_inputs():
    g = torch.Generator().manual_seed(123)
    n = sum(SPLIT)
    return {
        "q": torch.randn(n, 6, generator=g, dtype=DT),
        "k": torch.randn(n, 6, generator=g, dtype=DT),
        "f": torch.randn(n, 2, 6, generator=g, dtype=DT),
        "y": multi_hot(Y_MULTI[:n]),
        "cls": torch.tensor([0, 1, 0, 2, 3]),
    }


def _ddp_cases():
    """Name -> (loss factory(gather), fn(loss, tensors) -> scalar, grad keys)."""
    return {
        "infonce": (lambda g: InfoNCELoss(0.2, gather_distributed=g), lambda m, t: m(t["q"], t["k"]), ["q", "k"]),
        "ntxent": (lambda g: NTXentLoss(0.2, gather_distributed=g), lambda m, t: m(t["q"], t["k"]), ["q", "k"]),
        "softcon_bce": (
            lambda g: SoftConLoss(0.2, soft_term="bce", gather_distributed=g),
            lambda m, t: m(t["q"], t["k"], t["y"]),
            ["q", "k"],
        ),
        "softcon_ce_cls": (
            lambda g: SoftConLoss(0.2, soft_term="soft_ce", label_similarity="jaccard", gather_distributed=g),
            lambda m, t: m(t["q"], t["k"], t["cls"]),
            ["q", "k"],
        ),
        "supcon_1view": (
            lambda g: SupConLoss(0.1, gather_distributed=g),
            lambda m, t: m(t["f"][:, :1], t["cls"]),  # anchors 1 and 3/4 lack positives
            ["f"],
        ),
        "supcon": (lambda g: SupConLoss(0.1, gather_distributed=g), lambda m, t: m(t["f"], t["y"]), ["f"]),
        "mulsupcon": (lambda g: MulSupConLoss(0.1, gather_distributed=g), lambda m, t: m(t["q"], t["k"], t["y"]),
                      ["q", "k"]),
        "macl": (
            lambda g: MACLLoss([3, 2, 2, 1], 6, gather_distributed=g),
            lambda m, t: m(t["f"], t["y"]),
            ["f"],
        ),
        "triplet": (lambda g: TripletLoss(0.5, gather_distributed=g), lambda m, t: m(t["f"], t["y"]), ["f"]),
    }


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        start = sum(SPLIT[:rank])
        full = _ddp_inputs()
        local = {key: val[start : start + SPLIT[rank]] for key, val in full.items()}
        results = {"offset": rank_offset(SPLIT[rank])}
        for name, (factory, call, grad_keys) in _ddp_cases().items():
            tensors = {key: (val.clone().requires_grad_(True) if val.is_floating_point() else val)
                       for key, val in local.items()}
            loss = call(factory(True), tensors)
            loss.backward()
            results[name] = (loss.detach(), {key: tensors[key].grad.clone() for key in grad_keys})
        moco = MoCoV2Loss(dim=6, queue_size=8, gather_distributed=True).double()
        moco(local["q"], local["k"])
        results["moco_queue"] = moco.queue.features.clone()
        results["moco_ptr"] = int(moco.queue.ptr)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_gather_matches_single_process(tmp_path: Path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert [r["offset"] for r in res] == [0, SPLIT[0]]
    full = _ddp_inputs()
    for name, (factory, call, grad_keys) in _ddp_cases().items():
        tensors = {key: (val.clone().requires_grad_(True) if val.is_floating_point() else val)
                   for key, val in full.items()}
        single = call(factory(False), tensors)
        single.backward()
        # mean of the rank losses == single-process loss on the concatenated batch
        torch.testing.assert_close(sum(r[name][0] for r in res) / WORLD, single.detach(), **TOL, msg=name)
        for key in grad_keys:
            got = torch.cat([r[name][1][key] for r in res], dim=0) / WORLD  # DDP averages over ranks
            torch.testing.assert_close(got, tensors[key].grad, **TOL, msg=f"{name} d/d{key}")
            assert got.abs().sum() > 0
    # MoCo v2: both ranks enqueue the same gathered keys, in rank order
    torch.testing.assert_close(res[0]["moco_queue"][:5], res[1]["moco_queue"][:5])
    torch.testing.assert_close(res[0]["moco_queue"][:5], F.normalize(full["k"], dim=1))
    assert res[0]["moco_ptr"] == res[1]["moco_ptr"] == 5


def test_fused_softcon_terms_match_unfused_reference():
    """SoftCon's fused hard + BCE terms equal cross-entropy + BCE-with-logits, value and gradient.

    The cases cover grouped logarithms (1/tau = 5: 15 factors per log, with a remainder) and
    ungrouped ones (1/tau = 50, 60), square and offset (gathered-key) logit matrices, float32
    and float64, and logits at the bound.
    """
    import torch.nn.functional as F

    from train.losses.softcon import _HardAndSoftBCE

    g = torch.Generator().manual_seed(3)
    cases = ((0, (12, 12), 5.0, torch.float64), (5, (7, 20), 50.0, torch.float64),
             (0, (64, 64), 5.0, torch.float32), (3, (9, 31), 5.0, torch.float32), (2, (3, 5), 60.0, torch.float32))
    for offset, (b, m), bound, dtype in cases:
        x = (torch.rand(b, m, generator=g, dtype=dtype) * 2 - 1) * bound
        x[0, 0], x[-1, -1] = bound, -bound
        x.requires_grad_(True)
        s = torch.rand(b, m, generator=g, dtype=dtype)
        w_h, w_s = torch.rand((), generator=g, dtype=dtype) + 0.5, torch.rand((), generator=g, dtype=dtype) + 0.5
        hard, soft = _HardAndSoftBCE.apply(x, s, offset, bound)
        (gx,) = torch.autograd.grad(w_h * hard + w_s * soft, x)
        ref_h = F.cross_entropy(x, torch.arange(b) + offset, reduction="sum")
        ref_s = F.binary_cross_entropy_with_logits(x, s, reduction="sum")
        (rx,) = torch.autograd.grad(w_h * ref_h + w_s * ref_s, x)
        torch.testing.assert_close(hard, ref_h)
        torch.testing.assert_close(soft, ref_s)
        torch.testing.assert_close(gx, rx)

# ============================================================================ input contracts
# positional tensors of each call shape, labels not counted
CALL_ARITY = {LossCall.CROSS_VIEW: 2, LossCall.OWN_SYMMETRIC: 4, LossCall.VIEWS_AND_KEYS: 4,
              LossCall.VIEW_PAIR: 2, LossCall.STACKED_VIEWS: 1}


def _tensor_params(fn) -> list[str]:
    """Positional parameters of ``fn`` (a bound method), flags with defaults of bool type excluded."""
    sig = inspect.signature(fn)
    return [n for n, p in sig.parameters.items()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and not isinstance(p.default, bool)]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_declares_a_contract_its_signature_fits(name):
    contract = loss_contract(name)
    assert isinstance(contract, LossContract) and contract is LOSSES[name].contract
    method = "symmetric" if contract.call is LossCall.OWN_SYMMETRIC else "forward"
    params = _tensor_params(getattr(LOSSES[name], method).__get__(object()))
    assert len(params) >= CALL_ARITY[contract.call] + contract.labelled, (name, params)
    assert ("labels" in params) == contract.labelled or contract.call is LossCall.STACKED_VIEWS, (name, params)
    if contract.labelled:
        assert params[CALL_ARITY[contract.call]] == "labels", (name, params)


def test_unknown_or_undeclared_loss_fails_with_a_clear_error(monkeypatch):
    with pytest.raises(KeyError, match="unknown loss 'nope'.*softcon"):
        loss_contract("nope")

    class NoContract(torch.nn.Module):
        def forward(self, q, k):
            return (q * k).sum()

    monkeypatch.setitem(LOSSES, "no_contract", NoContract)
    with pytest.raises(TypeError, match="loss 'no_contract' \\(NoContract\\) declares no input contract"):
        loss_contract("no_contract")
    from train.pretrain import compute_loss

    z = (torch.randn(2, 3), torch.randn(2, 3))
    with pytest.raises(TypeError, match="declares no input contract"):
        compute_loss("no_contract", NoContract(), z, z, z, torch.zeros(2, 4))


class _Recorder(torch.nn.Module):
    """Records the positional arguments of each call (forward and symmetric), returns 1."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, tuple]] = []

    def forward(self, *args):
        self.calls.append(("forward", args))
        return torch.ones(())

    def symmetric(self, *args):
        self.calls.append(("symmetric", args))
        return torch.ones(())


@pytest.mark.parametrize("online", list(Online))
@pytest.mark.parametrize("labelled", [False, True])
def test_call_loss_passes_the_declared_tensors(online, labelled):
    z, q, k = ((torch.randn(3, 2), torch.randn(3, 2)) for _ in range(3))
    y = torch.randn(3, 5)
    a = z if online is Online.PROJECTION else q
    extra = (y,) if labelled else ()
    expected = {
        LossCall.CROSS_VIEW: [("forward", (a[0], k[1], *extra)), ("forward", (a[1], k[0], *extra))],
        LossCall.OWN_SYMMETRIC: [("symmetric", (a[0], a[1], k[0], k[1], *extra))],
        LossCall.VIEWS_AND_KEYS: [("forward", (a[0], a[1], k[0], k[1], *extra))],
        LossCall.VIEW_PAIR: [("forward", (a[0], a[1], *extra))],
        LossCall.STACKED_VIEWS: [("forward", (torch.stack([a[0], a[1]], dim=1), *extra))],
    }
    for call, calls in expected.items():
        rec = _Recorder()
        out = call_loss(LossContract(call, online, labelled=labelled), rec, z, q, k, y)
        assert float(out) == len(calls)
        assert [c for c, _ in rec.calls] == [c for c, _ in calls]
        for (_, got), (_, want) in zip(rec.calls, calls):
            assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want)), call
