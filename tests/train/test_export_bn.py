"""BatchNorm statistics of the exported backbone (train/pretrain.py).

The online backbone trains on Siamese-masked views; evaluation feeds full images. Before export the
BN running statistics are recomputed on unmasked training batches (``bn_recalibration_batches``).
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

import train.pretrain as pretrain
from train.data import EpochDataLoader
from train.models import build_backbone, random_patch_mask, zero_masked_patches

N_RECAL = 3


@pytest.fixture(scope="module")
def archive(small_archive):
    return small_archive(n_locations=8, size_px=32, patches_per_shard=4)


def config(archive: str, out, **kw) -> pretrain.PretrainConfig:
    base = dict(archive=archive, output_dir=str(out), splits="all", crop_size=32, batch_size=8, num_workers=0,
                proj_hidden=64, proj_out=32, pred_hidden=64, epochs=1, max_steps_per_epoch=3, warmup_epochs=0.5,
                log_every=1000, mask_ratio=0.5, bn_recalibration_batches=N_RECAL)
    base.update(kw)
    return pretrain.PretrainConfig.model_validate(base)


def recorded_run(cfg: pretrain.PretrainConfig) -> tuple[dict, list[dict]]:
    """Run ``cfg``, recording every batch the run's data loader hands out (training, then export)."""
    batches: list[dict] = []
    real = pretrain.build_dataloader

    class RecordingLoader(EpochDataLoader):
        def __iter__(self):
            for batch in super().__iter__():
                batches.append(batch)
                yield batch

    def build_dataloader(*args, **kwargs):
        loader = real(*args, **kwargs)
        loader.__class__ = RecordingLoader
        return loader

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pretrain, "build_dataloader", build_dataloader)
        res = pretrain.run_pretraining(cfg, progress=False)
    return res, batches


@pytest.fixture(scope="module")
def resnet_run(archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("bn-run") / "run"
    res, batches = recorded_run(config(archive, out))
    return out, res, batches


def first_bn(model: nn.Module) -> tuple[str, nn.modules.batchnorm._BatchNorm]:
    return next((n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def first_bn_input_statistics(model: nn.Module, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel: the mean over ``inputs`` of the batch mean and of the unbiased batch variance of what
    enters the first BN layer (what a cumulative average of the BN batch statistics holds).
    """
    _, bn = first_bn(model)
    seen: list[torch.Tensor] = []

    class Seen(Exception):
        pass

    def capture(module, args):
        seen.append(args[0].detach().double())
        raise Seen  # nothing after the first BN layer is needed

    handle = bn.register_forward_pre_hook(capture)
    model.eval()
    with torch.no_grad():
        for x in inputs:
            with pytest.raises(Seen):
                model(x)
    handle.remove()
    means = torch.stack([h.mean(dim=(0, 2, 3)) for h in seen])
    variances = torch.stack([h.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for h in seen])
    return means.mean(0), variances.mean(0)


def masked(inputs: list[torch.Tensor], seed: int = 0) -> list[torch.Tensor]:
    """The same inputs with half of the 14-px cells zeroed, as the online branch sees them."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for x in inputs:
        mask = random_patch_mask(x.shape[0], 3, 3, 0.5, generator=g)  # 32 px: a 3 × 3 grid of 14-px cells
        out.append(zero_masked_patches(x, mask, 14))
    return out


def exported_model(path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    tensors = load_file(str(path))
    model, _ = build_backbone("resnet18", 13)
    model.load_state_dict(tensors)
    return model, tensors


def test_exported_bn_statistics_are_those_of_the_unmasked_recalibration_batches(resnet_run):
    out, res, batches = resnet_run
    n_train = res["steps"]  # one batch per step (accumulate 1)
    recal = batches[n_train:n_train + N_RECAL]
    assert len(recal) == N_RECAL, f"{len(batches) - n_train} batches drawn after training, {N_RECAL} expected"
    inputs = [b[f"view{v}"] for b in recal for v in (1, 2)]  # one branch: both views, each its own pass
    model, tensors = exported_model(out / "backbone.safetensors")
    name, _ = first_bn(model)
    mean, var = first_bn_input_statistics(model, inputs)
    torch.testing.assert_close(tensors[f"{name}.running_mean"].double(), mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(tensors[f"{name}.running_var"].double(), var, rtol=1e-4, atol=1e-5)
    # what masked inputs would have given is far from it
    m_mean, m_var = first_bn_input_statistics(model, masked(inputs))
    assert (m_mean - mean).norm() > 0.2 * mean.norm()
    assert (m_var - var).norm() > 0.2 * var.norm()
    with safe_open(str(out / "backbone.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["bn_statistics"].startswith(f"recalibrated on {N_RECAL} unmasked training batches")


def test_exported_bn_statistics_describe_unmasked_training_views(resnet_run):
    """Independent of which batches were used: the exported statistics are close to those of the
    unmasked training views, far from those of the masked views the online branch trained on.
    """
    out, res, batches = resnet_run
    inputs = [b[f"view{v}"] for b in batches[:res["steps"]] for v in (1, 2)]
    model, tensors = exported_model(out / "backbone.safetensors")
    name, _ = first_bn(model)
    exported = torch.cat([tensors[f"{name}.running_mean"], tensors[f"{name}.running_var"]]).double()
    unmasked = torch.cat(first_bn_input_statistics(model, inputs))
    masked_stats = torch.cat(first_bn_input_statistics(model, masked(inputs)))
    gap = (masked_stats - unmasked).norm()
    assert (exported - unmasked).norm() < 0.25 * gap, ((exported - unmasked).norm(), gap)


def test_cross_modal_each_backbone_is_recalibrated_on_its_own_view(archive, tmp_path):
    out = tmp_path / "xm"
    res, batches = recorded_run(config(archive, out, view_mode="cross_modal", max_steps_per_epoch=1,
                                       bn_recalibration_batches=2))
    recal = batches[res["steps"]:res["steps"] + 2]
    assert len(recal) == 2
    for file, in_chans, view in [("backbone.safetensors", 13, 1), ("backbone-s1_grd.safetensors", 2, 2)]:
        tensors = load_file(str(out / file))
        model, _ = build_backbone("resnet18", in_chans)
        model.load_state_dict(tensors)
        name, _ = first_bn(model)
        mean, var = first_bn_input_statistics(model, [b[f"view{view}"] for b in recal])
        torch.testing.assert_close(tensors[f"{name}.running_mean"].double(), mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(tensors[f"{name}.running_var"].double(), var, rtol=1e-4, atol=1e-5)
        with safe_open(str(out / file), "pt") as f:
            assert f"(view{view} of each," in f.metadata()["bn_statistics"]


def test_no_recalibration_exports_the_training_statistics(archive, tmp_path):
    out = tmp_path / "run"
    res, batches = recorded_run(config(archive, out, bn_recalibration_batches=0, max_steps_per_epoch=2))
    assert len(batches) == res["steps"]  # nothing drawn for the export
    tensors = load_file(str(out / "backbone.safetensors"))
    checkpoint = load_file(str(pretrain.latest_checkpoint(out)))
    prefix = "model.branches.0.online.backbone."
    for key, value in tensors.items():
        torch.testing.assert_close(value, checkpoint[prefix + key], rtol=0, atol=0)
    with safe_open(str(out / "backbone.safetensors"), "pt") as f:
        assert f.metadata()["bn_statistics"].startswith("as trained")


def test_vit_export_records_no_batchnorm(archive, tmp_path):
    out = tmp_path / "vit"
    cfg = config(archive, out, backbone="vit_small_patch14_dinov2", crop_size=28, batch_size=4, max_steps_per_epoch=1)
    res, batches = recorded_run(cfg)
    assert len(batches) == res["steps"]  # no batch drawn: a ViT has no BatchNorm
    with safe_open(str(out / "backbone.safetensors"), "pt") as f:
        assert f.metadata()["bn_statistics"] == "none"


def test_recalibrate_batchnorm_cumulative_average_and_restores_the_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, momentum=0.3), nn.ReLU(), nn.BatchNorm2d(3))
    model.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    inputs = [torch.randn(4, 2, 6, 6) * (i + 1) + i for i in range(5)]
    n = pretrain.recalibrate_batchnorm(model, iter(inputs))
    assert n == 5
    conv_out = [model[0](x).detach().double() for x in inputs]
    mean = torch.stack([h.mean(dim=(0, 2, 3)) for h in conv_out]).mean(0)
    var = torch.stack([h.transpose(0, 1).flatten(1).var(dim=1) for h in conv_out]).mean(0)
    torch.testing.assert_close(model[1].running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var.double(), var, rtol=1e-5, atol=1e-6)
    assert model[1].momentum == 0.3 and model[3].momentum == 0.1  # momenta restored
    assert not any(m.training for m in model.modules())  # eval mode restored
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v)
    assert pretrain.recalibrate_batchnorm(nn.Linear(2, 2), iter(inputs)) == 0
