"""Pretraining benchmarks, printed in one run as ratios against baselines measured in the same process.

1. SoftCon loss forward + backward vs InfoNCE on the same batch (goal ≤ 1.3 at batch 512, dim 256).
2. A full SoftCon training step (online + EMA forward, loss, backward, AdamW, EMA update) vs the
   same step with InfoNCE (goal ≤ 1.1).
3. The archive loader's samples per second with augmentation vs reading the same patches from
   per-band GeoTIFFs in the SSL4EO-S12 layout (goal ≥ 3); delegated to ``bench_loader.py``.

1 and 2 time both sides alternately (same machine load) and are measured twice: with glibc's default
allocator, then with freed memory kept in the process (``train/cpu_memory.py``), the setting that
``softcon pretrain`` applies on the CPU; the goals refer to the latter.

Usage: ``.venv/bin/python benchmarks/bench_pretrain.py [--batch 512] [--dim 256] [--skip-loader]``
"""

from __future__ import annotations

import argparse

import torch
from common import timed_pair

from train.cpu_memory import keep_freed_memory
from train.losses import InfoNCELoss, SoftConLoss
from train.pretrain import Branch, PretrainConfig, PretrainModel, compute_loss


def bench_loss(batch: int, dim: int, repeats: int) -> str:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, dim, generator=g, requires_grad=True)
    k = torch.randn(batch, dim, generator=g)
    labels = (torch.rand(batch, 9, generator=g) < 0.3).float()
    softcon, infonce = SoftConLoss(temperature=0.2, lam=1.0, soft_term="bce"), InfoNCELoss(temperature=0.2)

    def run(fn):
        def step():
            q.grad = None
            fn().backward()
        return step

    t_soft, t_info = timed_pair(run(lambda: softcon(q, k, labels)), run(lambda: infonce(q, k)), repeats)
    ratio = t_soft / t_info
    return (f"loss fwd+bwd (batch {batch}, dim {dim}): SoftCon {t_soft * 1e3:.2f} ms, InfoNCE {t_info * 1e3:.2f} ms "
            f"-> ratio {ratio:.2f} (goal <= 1.3)")


def bench_step(batch: int, crop: int, backbone: str, repeats: int) -> str:
    cfg = PretrainConfig(backbone=backbone, crop_size=crop, batch_size=batch, proj_hidden=512, proj_out=128,
                         pred_hidden=512, mask_ratio=0.5)
    g = torch.Generator().manual_seed(1)
    v1, v2 = torch.rand(batch, 13, crop, crop, generator=g), torch.rand(batch, 13, crop, crop, generator=g)
    labels = (torch.rand(batch, 9, generator=g) < 0.3).float()
    bands = [f"b{i}" for i in range(13)]

    def make_step(loss_name: str, loss_fn):
        torch.manual_seed(0)
        model = PretrainModel([Branch(backbone, 13, cfg, bands)], cfg.mask_ratio)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-3)
        counter = iter(range(10**9))

        def step():
            opt.zero_grad(set_to_none=True)
            z, q, k = model(v1, v2, next(counter))
            compute_loss(loss_name, loss_fn, z, q, k, labels).backward()
            opt.step()
            model.branches[0].update_target(0.99)
        return step

    t_soft, t_info = timed_pair(make_step("softcon", SoftConLoss(temperature=0.2, lam=1.0)),
                                make_step("infonce", InfoNCELoss(temperature=0.2)), repeats, warmup=2)
    ratio = t_soft / t_info
    return (f"training step ({backbone}, batch {batch}, {crop} px, 13 bands): SoftCon {t_soft:.3f} s, "
            f"InfoNCE {t_info:.3f} s -> ratio {ratio:.2f} (goal <= 1.1)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=512, help="loss benchmark batch size")
    ap.add_argument("--dim", type=int, default=256, help="loss benchmark embedding size")
    ap.add_argument("--step-batch", type=int, default=32, help="training-step benchmark batch size")
    ap.add_argument("--crop", type=int, default=64, help="training-step crop size")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--skip-loader", action="store_true", help="skip the loader vs GeoTIFF comparison")
    args = ap.parse_args()
    lines = []
    # First with glibc's default allocator, then with the setting `softcon pretrain` applies on the CPU
    # (train/cpu_memory.py); the setting cannot be undone, hence this order.
    for setting in ("glibc default allocator", "freed memory kept, as softcon pretrain runs on the CPU"):
        if lines:
            keep_freed_memory()
        print(f"-- {setting}", flush=True)
        lines.append(f"{bench_loss(args.batch, args.dim, max(args.repeats, 100))} [{setting}]")
        print(lines[-1], flush=True)
        lines.append(f"{bench_step(args.step_batch, args.crop, args.backbone, max(3, args.repeats // 2))} [{setting}]")
        print(lines[-1], flush=True)
    if not args.skip_loader:
        import bench_loader

        ratio = bench_loader.main([])
        lines.append(f"loader vs per-band GeoTIFFs: ratio {ratio:.2f} (goal >= 3; details above)")
    print("\nsummary:\n  " + "\n  ".join(lines))


if __name__ == "__main__":
    main()
