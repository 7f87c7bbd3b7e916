"""Benchmark: chunked torch retrieval metrics vs a per-query numpy/sklearn baseline.

Random Gaussian embeddings and random multi-label labels; every query is scored against the
whole database (no self-exclusion: queries and database are separate sets). The baseline walks
the queries one at a time: numpy matrix-vector similarities, a stable argsort (ties: lower index
first, as ours), numpy for mAP/P/R/ACG/wAP and ``sklearn.metrics.ndcg_score`` for NDCG (given
gains 2^I − 1, so its linear gain equals our graded gain). To keep it bounded, the baseline runs
on the first ``--subset`` queries only and its time is extrapolated linearly to all queries.

The timed run of our code uses float32 embeddings (the realistic path). The baseline works in
float64, so that a last-bit float32 rounding difference cannot swap two near-tied items between
the two rankings; the per-metric max |diff| therefore compares the baseline with our code rerun
on the same subset with float64 embeddings (that run is not timed). The float32 run is also
compared, and the number of subset queries where it differs (near-ties only) is printed.

Example::

    .venv/bin/python benchmarks/bench_retrieval.py --n 20000 --dim 128 --subset 500
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from sklearn.metrics import ndcg_score

from train.evaluate.metrics import RETRIEVAL_METRICS, retrieval_metrics_per_query


def baseline_per_query(q: np.ndarray, yq: np.ndarray, d: np.ndarray, yd: np.ndarray, ks) -> dict:
    """Per-query metrics, one query at a time ("share" relevance, AP normaliser R_K)."""
    out = {f"{m}@{k}": np.zeros(len(q)) for k in ks for m in RETRIEVAL_METRICS}
    n_rel = np.zeros(len(q), dtype=np.int64)
    yd_f = yd.astype(np.float32)
    for i in range(len(q)):
        sim = d @ q[i]
        order = np.argsort(-sim, kind="stable")
        inter_all = yd_f @ yq[i].astype(np.float32)
        rel_all = inter_all > 0
        n_rel[i] = int(rel_all.sum())
        gains_all = 2.0 ** inter_all.astype(np.float64) - 1.0
        for k in ks:
            kk = min(k, len(d))
            top = order[:kk]
            inter = inter_all[top].astype(np.float64)
            rel = rel_all[top].astype(np.float64)
            pos = np.arange(1, kk + 1)
            r_k = rel.sum()
            ap = (rel * np.cumsum(rel) / pos).sum() / r_k if r_k else 0.0
            wap = (rel * np.cumsum(inter) / pos).sum() / r_k if r_k else 0.0
            out[f"mAP@{k}"][i] = ap
            out[f"P@{k}"][i] = r_k / kk
            out[f"R@{k}"][i] = r_k / n_rel[i] if n_rel[i] else 0.0
            out[f"ACG@{k}"][i] = inter.sum() / kk
            out[f"wAP@{k}"][i] = wap
            out[f"NDCG@{k}"][i] = ndcg_score(gains_all[None], sim[None].astype(np.float64), k=kk) if n_rel[i] else 0.0
    return out, n_rel


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="number of queries and of database items (default 20000)")
    ap.add_argument("--dim", type=int, default=128, help="embedding dimension (default 128)")
    ap.add_argument("--classes", type=int, default=19, help="number of labels (default 19, BigEarthNet)")
    ap.add_argument("--label-prob", type=float, default=0.15, help="probability of each label (default 0.15)")
    ap.add_argument("--subset", type=int, default=500, help="queries timed for the per-query baseline (default 500)")
    ap.add_argument("--ks", type=int, nargs="+", default=[10, 50, 100], help="cut-offs K (default 10 50 100)")
    ap.add_argument("--chunk-size", type=int, default=None, help="queries per chunk (default: automatic)")
    ap.add_argument("--device", default="cpu", help="torch device for our metrics (default cpu)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    n, subset = args.n, min(args.subset, args.n)
    q = rng.standard_normal((n, args.dim), dtype=np.float32)
    d = rng.standard_normal((n, args.dim), dtype=np.float32)
    yq = rng.random((n, args.classes)) < args.label_prob
    yd = rng.random((n, args.classes)) < args.label_prob
    print(f"queries={n} database={n} dim={args.dim} classes={args.classes} ks={args.ks} "
          f"device={args.device} torch_threads={torch.get_num_threads()}")

    dev = torch.device(args.device)
    tq, td = torch.from_numpy(q).to(dev), torch.from_numpy(d).to(dev)
    tyq, tyd = torch.from_numpy(yq).to(dev), torch.from_numpy(yd).to(dev)
    retrieval_metrics_per_query(tq[:8], tyq[:8], td, tyd, ks=args.ks)  # warm-up
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    ours, n_rel = retrieval_metrics_per_query(tq, tyq, td, tyd, ks=args.ks, chunk_size=args.chunk_size)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t_ours = time.perf_counter() - t0

    q64, d64 = q.astype(np.float64), d.astype(np.float64)
    qn = q64 / np.linalg.norm(q64, axis=1, keepdims=True)
    dn = d64 / np.linalg.norm(d64, axis=1, keepdims=True)
    t0 = time.perf_counter()
    base, base_nrel = baseline_per_query(qn[:subset], yq[:subset], dn, yd, args.ks)
    t_base_sub = time.perf_counter() - t0
    t_base = t_base_sub * n / subset
    exact, _ = retrieval_metrics_per_query(
        torch.from_numpy(q64[:subset]).to(dev), tyq[:subset], torch.from_numpy(d64).to(dev), tyd, ks=args.ks
    )

    assert np.array_equal(base_nrel, n_rel[:subset].numpy()), "relevant counts differ"
    valid = n_rel > 0
    vs = valid[:subset].numpy()
    print(f"ours (chunked torch, float32, all {n} queries): {t_ours:.2f} s")
    print(f"baseline (per-query numpy + sklearn ndcg_score, float64): {t_base_sub:.2f} s on {subset} queries, "
          f"extrapolated linearly to {n} queries: {t_base:.1f} s")
    print(f"speed-up: {t_base / t_ours:.1f}x (goal >= 20x); queries with relevant items: {int(valid.sum())}/{n}")
    print(f"per metric: mean over valid queries (ours, all {n}) and max |ours - baseline| over the "
          f"{int(vs.sum())} valid subset queries (ours rerun in float64)")
    worst, f32_off = 0.0, np.zeros(subset, dtype=bool)
    for k in args.ks:
        for m in RETRIEVAL_METRICS:
            name = f"{m}@{k}"
            ref = base[name][vs]
            diff = float(np.max(np.abs(exact[name].numpy()[vs] - ref))) if vs.any() else math.nan
            f32_off[vs] |= np.abs(ours[name][:subset].numpy()[vs] - ref) > 1e-9
            worst = max(worst, diff)
            print(f"  {name:<9} mean={ours[name][valid].mean().item():.6f}  max|diff|={diff:.1e}")
    print(f"overall max |diff| = {worst:.1e}; float32 run differs from the baseline (> 1e-9) on "
          f"{int(f32_off.sum())}/{int(vs.sum())} subset queries (near-tied similarities ranked differently)")


if __name__ == "__main__":
    main()
