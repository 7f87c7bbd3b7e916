"""Tests for the train.models package: backbone registry, local weight loading, heads and Siamese masking.

Everything runs on CPU with tiny inputs (ViT 56/112 px, ResNet 64 px, batch 2) and with
checkpoints made inside the tests: no network, no hub weights.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from pipeline.bands import S1_GRD_BANDS, S2_L1C_BANDS, S2_L2A_BANDS
from train.models import (
    BACKBONES,
    Encoder,
    LoadReport,
    PredictionHead,
    ProjectionHead,
    WeightLoadError,
    build_backbone,
    build_encoder,
    get_backbone_spec,
    inflate_first_layer,
    load_weights,
    normalize_band_name,
    random_patch_mask,
    read_checkpoint,
    resize_pos_embed,
    unwrap_state_dict,
    vit_forward_masked,
    zero_masked_patches,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VIT_S = "vit_small_patch14_dinov2"
FEATURE_DIMS = {
    "resnet18": 512,
    "resnet50": 2048,
    "vit_small_patch14_dinov2": 384,
    "vit_base_patch14_dinov2": 768,
}
FIRST_W, FIRST_B = "patch_embed.proj.weight", "patch_embed.proj.bias"


def _to_official_dinov2(sd: dict[str, torch.Tensor], chunks: int = 0) -> dict[str, torch.Tensor]:
    """Rewrite a timm DINOv2 state dict in the facebookresearch/dinov2 layout.

    Adds the ``mask_token`` the official model carries and, with ``chunks > 0``, nests the blocks
    as ``blocks.<chunk>.<global index>.*`` (``block_chunks`` training checkpoints).
    """
    out: dict[str, torch.Tensor] = {}
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    per_chunk = depth // chunks if chunks else 0
    for key, value in sd.items():
        if chunks and key.startswith("blocks."):
            idx = int(key.split(".")[1])
            rest = key.split(".", 2)[2]
            key = f"blocks.{idx // per_chunk}.{idx}.{rest}"
        out[key] = value.clone()
    out["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    return out


@pytest.fixture(scope="module")
def rgb_vit() -> nn.Module:
    """A 3-channel timm ViT-S/14 at 112 px (8x8 grid) with non-trivial random weights."""
    torch.manual_seed(0)
    model = timm.create_model(VIT_S, pretrained=False, num_classes=0, in_chans=3, img_size=112)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma") or name in ("cls_token", "pos_embed"):
                p.normal_(0, 0.1)  # LayerScale starts at 1e-5: make it matter for the comparisons
    return model.eval()


@pytest.fixture(scope="module")
def dinov2_files(rgb_vit: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The RGB ViT saved in the official DINOv2 layout: safetensors, a DINO-style .pth container,
    and a chunked-blocks .pth.
    """
    root = tmp_path_factory.mktemp("dinov2")
    sd = rgb_vit.state_dict()
    official = _to_official_dinov2(sd)
    files = {"safetensors": root / "dinov2_vits14.safetensors", "pth": root / "dinov2_vits14.pth"}
    save_file({k: v.contiguous() for k, v in official.items()}, str(files["safetensors"]))
    teacher = {f"backbone.{k}": v for k, v in official.items()}
    teacher["dino_head.mlp.0.weight"] = torch.zeros(4, 384)
    torch.save({"teacher": teacher, "iteration": 7}, files["pth"])
    files["chunked"] = root / "dinov2_chunked.pth"
    torch.save(_to_official_dinov2(sd, chunks=4), files["chunked"])
    return files


def _vit13(img_size: int = 56) -> nn.Module:
    torch.manual_seed(1)
    model, _ = build_backbone(VIT_S, 13, img_size=img_size)
    return model.eval()


# ------------------------------------------------------------------------------ registry


@pytest.mark.parametrize("name", sorted(FEATURE_DIMS))
def test_backbones_build_for_13_12_2_channels(name: str) -> None:
    vit = BACKBONES[name].family == "vit"
    size = 56 if vit else 64
    for chans in (13, 12, 2):
        model, dim = build_backbone(name, chans, img_size=size if vit else None)
        assert dim == FEATURE_DIMS[name]
        model.eval()
        with torch.no_grad():
            out = model(torch.randn(2, chans, size, size))
        assert out.shape == (2, dim)
        first = model.patch_embed.proj if vit else model.conv1
        assert first.in_channels == chans


def test_registry_aliases_and_errors() -> None:
    assert get_backbone_spec("vits14").timm_name == VIT_S
    assert get_backbone_spec("rn50").feature_dim == 2048
    with pytest.raises(KeyError, match="unknown backbone"):
        get_backbone_spec("vit_huge")
    with pytest.raises(ValueError, match="first_layer"):
        build_backbone("resnet18", 13, first_layer="repeat")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="band_names"):
        build_backbone("resnet18", 13, band_names=S2_L2A_BANDS)
    with pytest.raises(ValueError, match="pretrained"):
        build_backbone("resnet18", 13, pretrained=True)


def test_vit_default_grid_is_224_and_dynamic_size_works() -> None:
    model, _ = build_backbone(VIT_S, 2)
    assert tuple(model.patch_embed.grid_size) == (16, 16)
    assert model.pos_embed.shape == (1, 257, 384)
    small, _ = build_backbone(VIT_S, 2, img_size=56)
    with torch.no_grad():
        assert small.eval()(torch.randn(1, 2, 84, 70)).shape == (1, 384)  # 6x5 grid, interpolated


# ------------------------------------------------------------------------------ DINOv2 ViT loading


@pytest.mark.parametrize("kind", ["safetensors", "pth", "chunked"])
def test_dinov2_layout_into_13_channel_vit_random_policy(
    kind: str, rgb_vit: nn.Module, dinov2_files: dict[str, Path]
) -> None:
    model = _vit13()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = load_weights(model, dinov2_files[kind], first_layer="random")
    src, dst = rgb_vit.state_dict(), model.state_dict()

    for key, value in dst.items():
        if key in (FIRST_W, FIRST_B):
            assert torch.equal(value, before[key]), f"{key} should keep its random init"
        elif key == "pos_embed":
            assert torch.equal(value[:, :1], src[key][:, :1])  # CLS entry untouched
        else:
            assert torch.equal(value, src[key]), key

    assert report.ok, str(report)
    assert report.layout == "dinov2-official"
    assert report.missing_keys == [] and report.unexpected_keys == []
    assert report.shape_mismatched_keys[FIRST_W].resolved
    assert "random" in report.shape_mismatched_keys[FIRST_W].action
    assert FIRST_B in report.ignored_keys and "mask_token" in report.ignored_keys
    assert "pos_embed" in report.adapted_keys
    assert FIRST_W not in report.loaded_keys and "blocks.11.ls2.gamma" in report.loaded_keys
    if kind == "pth":
        assert report.container[0] == "teacher"
        assert "dino_head.mlp.0.weight" in report.ignored_keys
    if kind == "chunked":
        assert report.adapted_keys["blocks.5.attn.qkv.weight"].startswith("renamed blocks.<chunk>")
    text = str(report)
    for needle in (FIRST_W, "mask_token", "pos_embed", "missing: none", "unexpected: none"):
        assert needle in text


def test_dinov2_inflate_with_band_names(rgb_vit: nn.Module, dinov2_files: dict[str, Path]) -> None:
    model = _vit13()
    report = load_weights(model, dinov2_files["safetensors"], first_layer="inflate", band_names=S2_L1C_BANDS)
    w_rgb = rgb_vit.state_dict()[FIRST_W]
    w = model.state_dict()[FIRST_W]
    scale = 3 / 13
    for band, rgb_idx in (("B4", 0), ("B3", 1), ("B2", 2)):
        torch.testing.assert_close(w[:, S2_L1C_BANDS.index(band)], w_rgb[:, rgb_idx] * scale)
    mean = w_rgb.mean(dim=1)
    for band in ("B1", "B8", "B8A", "B12"):
        torch.testing.assert_close(w[:, S2_L1C_BANDS.index(band)], mean * scale)
    assert torch.equal(model.state_dict()[FIRST_B], rgb_vit.state_dict()[FIRST_B])
    assert report.ok and FIRST_W in report.adapted_keys and FIRST_B in report.loaded_keys
    assert "B4<-B4" in report.adapted_keys[FIRST_W]


def test_inflate_mean_tile_preserves_response_to_flat_input(
    rgb_vit: nn.Module, dinov2_files: dict[str, Path]
) -> None:
    """Without band names every channel gets mean*3/C: a spectrally flat image embeds as in RGB."""
    model = _vit13()
    load_weights(model, dinov2_files["pth"], first_layer="inflate")
    w = model.state_dict()[FIRST_W]
    torch.testing.assert_close(w, rgb_vit.state_dict()[FIRST_W].mean(1, keepdim=True).expand_as(w) * 3 / 13)
    flat = torch.rand(2, 1, 56, 56)
    with torch.no_grad():
        a = model.patch_embed.proj(flat.expand(-1, 13, -1, -1))
        b = rgb_vit.patch_embed.proj(flat.expand(-1, 3, -1, -1))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_build_backbone_with_weights_attaches_report(dinov2_files: dict[str, Path]) -> None:
    model, dim = build_backbone(VIT_S, 2, img_size=56, weights=dinov2_files["safetensors"], first_layer="inflate",
                                band_names=S1_GRD_BANDS)
    assert dim == 384 and isinstance(model.load_report, LoadReport) and model.load_report.ok
    assert "mean kernel" in model.load_report.adapted_keys[FIRST_W]  # VV/VH match no RGB band


def test_pos_embed_interpolation(rgb_vit: nn.Module, dinov2_files: dict[str, Path]) -> None:
    pos = rgb_vit.state_dict()["pos_embed"]  # (1, 1 + 8*8, 384)
    assert torch.equal(resize_pos_embed(pos, (8, 8)), pos)
    const = torch.cat([torch.zeros(1, 1, 4), torch.full((1, 64, 4), 0.25)], dim=1)
    out = resize_pos_embed(const, (3, 5))
    assert out.shape == (1, 16, 4)
    torch.testing.assert_close(out[:, 1:], torch.full((1, 15, 4), 0.25))
    with pytest.raises(ValueError, match="square"):
        resize_pos_embed(pos[:, :-1], (4, 4))

    model = _vit13(img_size=56)  # 4x4 grid
    report = load_weights(model, dinov2_files["safetensors"])
    expected = resize_pos_embed(pos, (4, 4))
    assert torch.equal(model.pos_embed.detach(), expected)
    mm = report.shape_mismatched_keys["pos_embed"]
    assert mm.source_shape == (1, 65, 384) and mm.model_shape == (1, 17, 384) and mm.resolved
    up = _vit13(img_size=154)  # 11x11 grid: upsampling path
    load_weights(up, dinov2_files["safetensors"])
    assert up.pos_embed.shape == (1, 122, 384)
    torch.testing.assert_close(up.pos_embed[:, 0], pos[:, 0])


# ------------------------------------------------------------------------------ ResNet loading


@pytest.fixture(scope="module")
def tv_resnet50() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    model = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_()
    return model.state_dict()


def test_torchvision_resnet50_into_13_channel_timm(tv_resnet50: dict[str, torch.Tensor], tmp_path: Path) -> None:
    path = tmp_path / "resnet50_tv.pth"
    torch.save(tv_resnet50, path)
    model, dim = build_backbone("resnet50", 13)
    report = load_weights(model, path, first_layer="inflate", band_names=S2_L1C_BANDS, strict=True)
    dst = model.state_dict()
    for key, value in dst.items():
        if key != "conv1.weight":
            assert torch.equal(value, tv_resnet50[key]), key
    w_rgb = tv_resnet50["conv1.weight"]
    torch.testing.assert_close(dst["conv1.weight"][:, S2_L1C_BANDS.index("B4")], w_rgb[:, 0] * 3 / 13)
    torch.testing.assert_close(dst["conv1.weight"][:, 0], w_rgb.mean(1) * 3 / 13)
    assert report.layout == "torchvision-resnet" and report.ok
    assert set(report.ignored_keys) == {"fc.weight", "fc.bias"}
    assert dim == 2048


def test_dino_resnet_container_with_module_prefix(tv_resnet50: dict[str, torch.Tensor], tmp_path: Path) -> None:
    """DINO training checkpoints: {'student': {'module.backbone.*', 'module.head.*'}, ...}."""
    student = {f"module.backbone.{k}": v for k, v in tv_resnet50.items() if not k.startswith("fc.")}
    student["module.head.mlp.0.weight"] = torch.zeros(3, 2048)
    path = tmp_path / "dino_rn50_checkpoint.pth"
    torch.save({"student": student, "teacher": {}, "epoch": 3}, path)
    model, _ = build_backbone("resnet50", 2)
    report = load_weights(model, path, checkpoint_key="student")
    assert report.ok, str(report)
    assert report.container[:3] == ["student", "strip 'module.'", "strip 'backbone.'"]
    assert "head.mlp.0.weight" in report.ignored_keys
    assert torch.equal(model.state_dict()["layer4.2.bn3.running_mean"], tv_resnet50["layer4.2.bn3.running_mean"])
    assert not torch.equal(model.state_dict()["conv1.weight"][:, :2], tv_resnet50["conv1.weight"][:, :2])


# ------------------------------------------------------------------------------ SoftCon checkpoints


def test_softcon_b13_backbone_only_round_trip(tmp_path: Path) -> None:
    """B13_* files are bare backbone state dicts with a 13-channel first layer (ViT in the official
    DINOv2 layout, RN50 in the torchvision layout without fc).
    """
    vit = _vit13()
    vit_path = tmp_path / "B13_vits14_softcon.pth"
    torch.save(_to_official_dinov2(vit.state_dict()), vit_path)
    rn, _ = build_backbone("resnet50", 13)
    rn_path = tmp_path / "B13_rn50_softcon.pth"
    torch.save(rn.state_dict(), rn_path)

    for name, src, path in ((VIT_S, vit, vit_path), ("rn50", rn, rn_path)):
        torch.manual_seed(5)
        fresh, _ = build_backbone(name, 13, img_size=56, weights=path, strict=True)
        report = fresh.load_report
        assert report.ok and not report.shape_mismatched_keys and not report.adapted_keys
        for key, value in fresh.state_dict().items():
            assert torch.equal(value, src.state_dict()[key]), key
    assert set(report.ignored_keys) == set()  # RN50 file has no fc

    # 13-band L1C weights into a 12-band L2A model: bands matched by name (B10 dropped), x13/12.
    l2a, _ = build_backbone(VIT_S, 12, img_size=56)
    rep = load_weights(l2a, vit_path, first_layer="inflate", band_names=S2_L2A_BANDS)
    w13, w12 = vit.state_dict()[FIRST_W], l2a.state_dict()[FIRST_W]
    for j, band in enumerate(S2_L2A_BANDS):
        torch.testing.assert_close(w12[:, j], w13[:, S2_L1C_BANDS.index(band)] * 13 / 12)
    assert any("B13_" in n for n in rep.notes)


def test_softcon_b2_round_trip_safetensors(tmp_path: Path) -> None:
    src, _ = build_backbone("resnet18", 2)
    path = tmp_path / "B2_rn18_softcon.safetensors"
    save_file(src.state_dict(), str(path))
    dst, _ = build_backbone("resnet18", 2, weights=path, strict=True)
    for key, value in dst.state_dict().items():
        assert torch.equal(value, src.state_dict()[key]), key


# ------------------------------------------------------------------------------ safety and strictness


class _Payload:
    """Unpickling this object would create a marker file (stands in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.marker), "w"))


def test_torch_load_is_weights_only(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": _Payload(marker)}, path)
    with pytest.raises(WeightLoadError, match="weights_only"):
        read_checkpoint(path)
    model, _ = build_backbone("resnet18", 3)
    with pytest.raises(WeightLoadError):
        load_weights(model, path)
    assert not marker.exists()
    with pytest.raises(ValueError, match="local"):
        read_checkpoint("https://huggingface.co/wangyi111/softcon/B13_rn50_softcon.pth")
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "absent.pth")


def test_strict_raises_with_report(tmp_path: Path) -> None:
    src, _ = build_backbone("resnet18", 3)
    sd = src.state_dict()
    sd["foo.bar"] = torch.zeros(2)
    del sd["layer1.0.bn1.weight"]
    sd["layer4.1.conv2.weight"] = torch.zeros(512, 512, 1, 1)
    model, _ = build_backbone("resnet18", 3)
    with pytest.raises(WeightLoadError) as err:
        load_weights(model, sd, strict=True)
    message = str(err.value)
    for needle in ("NOT CLEAN", "foo.bar", "layer1.0.bn1.weight", "layer4.1.conv2.weight", "UNRESOLVED"):
        assert needle in message
    report = load_weights(model, sd)
    assert not report.ok
    assert report.unexpected_keys == ["foo.bar"] and report.missing_keys == ["layer1.0.bn1.weight"]
    assert list(report.unresolved_mismatches) == ["layer4.1.conv2.weight"]


def test_unwrap_and_band_helpers() -> None:
    trail: list[str] = []
    inner = {"a.weight": torch.ones(1)}
    assert unwrap_state_dict({"model": {"state_dict": inner}, "epoch": 1}, trail=trail) == inner
    assert trail == ["model", "state_dict"]
    with pytest.raises(WeightLoadError):
        unwrap_state_dict({"epoch": 1})
    assert normalize_band_name("b08") == "B8" and normalize_band_name("B8a") == "B8A"
    w, how = inflate_first_layer(torch.ones(4, 3, 2, 2), 2)
    assert w.shape == (4, 2, 2, 2) and torch.allclose(w, torch.full_like(w, 1.5)) and "mean kernel" in how


# ------------------------------------------------------------------------------ masking


def test_random_patch_mask_counts_and_determinism() -> None:
    m = random_patch_mask(2, 4, 4, 0.5, torch.Generator().manual_seed(0))
    assert m.shape == (2, 16) and m.dtype == torch.bool and m.sum(1).tolist() == [8, 8]
    again = random_patch_mask(2, 4, 4, 0.5, torch.Generator().manual_seed(0))
    other = random_patch_mask(2, 4, 4, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(m, again) and not torch.equal(m, other)
    assert not random_patch_mask(3, 16, 16, 0.0).any()
    assert random_patch_mask(1, 16, 16, 0.67).sum() == 172
    assert random_patch_mask(1, 2, 2, 0.99).sum() == 3  # at least one cell stays visible
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError):
            random_patch_mask(1, 4, 4, bad)


def test_vit_forward_masked_matches_and_drops_tokens() -> None:
    model = _vit13()
    x = torch.randn(2, 13, 56, 56)
    seen: list[int] = []
    hook = model.blocks[0].register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[1]))
    with torch.no_grad():
        ref = model(x)
        ref_ff = model.forward_head(model.forward_features(x), pre_logits=True)
        keep_all = ~random_patch_mask(2, 4, 4, 0.0)
        torch.testing.assert_close(vit_forward_masked(model, x, keep_all), ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(vit_forward_masked(model, x, None), ref_ff, rtol=0, atol=1e-6)
        seen.clear()
        keep = ~random_patch_mask(2, 4, 4, 0.5, torch.Generator().manual_seed(3))
        a = vit_forward_masked(model, x, keep)
        assert seen == [1 + 8]  # CLS + 8 of 16 patch tokens
        b = vit_forward_masked(model, x, ~random_patch_mask(2, 4, 4, 0.5, torch.Generator().manual_seed(3)))
        assert torch.equal(a, b) and a.shape == (2, 384) and not torch.allclose(a, ref)
        # dropping tokens == running the model on only those tokens: sample 0 alone gives the same row
        torch.testing.assert_close(vit_forward_masked(model, x[:1], keep[:1]), a[:1], rtol=1e-5, atol=1e-5)
    hook.remove()
    bad = torch.ones(2, 16, dtype=torch.bool)
    bad[0, 0] = False
    with pytest.raises(ValueError, match="same number"):
        vit_forward_masked(model, x, bad)
    with pytest.raises(ValueError, match="shape"):
        vit_forward_masked(model, x, torch.ones(2, 9, dtype=torch.bool))


def test_zero_masked_patches() -> None:
    x = torch.ones(2, 3, 10, 7)
    mask = torch.zeros(2, 3, 2, dtype=torch.bool)  # ceil(10/4) x ceil(7/4)
    mask[0, 0, 0] = True
    mask[1, 2, 1] = True  # partial edge cell: rows 8-9, cols 4-6
    out = zero_masked_patches(x, mask.reshape(2, -1), 4)
    assert out[0, :, :4, :4].eq(0).all() and out[0].sum() == 3 * (70 - 16)
    assert out[1, :, 8:, 4:].eq(0).all() and out[1].sum() == 3 * (70 - 6)
    with pytest.raises(ValueError):
        zero_masked_patches(x, torch.zeros(2, 5, dtype=torch.bool), 4)


# ------------------------------------------------------------------------------ heads and encoder


def test_heads_shapes_and_structure() -> None:
    proj = ProjectionHead(384, hidden=64, out=32, layers=3)
    linears = [m for m in proj.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(384, 64), (64, 64), (64, 32)]
    assert all(m.bias is None for m in linears)
    last = list(proj.net)[-1]
    assert isinstance(last, nn.BatchNorm1d) and not last.affine
    assert proj(torch.randn(2, 384)).shape == (2, 32)
    pred = PredictionHead(32, hidden=48)
    assert pred(torch.randn(2, 32)).shape == (2, 32)
    assert not isinstance(list(pred.net)[-1], nn.BatchNorm1d)
    assert len([m for m in pred.modules() if isinstance(m, nn.Linear)]) == 2
    default = ProjectionHead(8)
    assert (default.hidden, default.out_dim) == (4096, 256)


@pytest.mark.parametrize("name,size,layers", [(VIT_S, 56, 3), ("resnet18", 64, 2)])
def test_build_encoder(name: str, size: int, layers: int) -> None:
    enc = build_encoder(name, 13, 64, 32, img_size=size, pred_hidden=48)
    assert isinstance(enc, Encoder) and enc.backbone is not None
    assert len([m for m in enc.projector.modules() if isinstance(m, nn.Linear)]) == layers
    x = torch.randn(2, 13, size, size)
    gh, gw = enc.mask_grid(size, size)
    assert (gh, gw) == ((4, 4) if name == VIT_S else (5, 5))
    mask = random_patch_mask(2, gh, gw, 0.5, torch.Generator().manual_seed(0))
    enc.train()
    assert enc(x).shape == (2, 32)
    assert enc(x, mask).shape == (2, 32)
    assert enc.predict(x, mask).shape == (2, 32)
    enc.eval()
    with torch.no_grad():
        assert enc.features(x).shape == (2, FEATURE_DIMS[name])
        assert enc.features(x, torch.zeros(2, gh * gw, dtype=torch.bool)).allclose(enc.features(x), atol=1e-5)
    no_pred = build_encoder(name, 2, 16, 8, img_size=size)
    with pytest.raises(RuntimeError, match="predictor"):
        no_pred.predict(torch.randn(2, 2, size, size))


def test_report_str_is_readable(dinov2_files: dict[str, Path]) -> None:
    report = load_weights(_vit13(), dinov2_files["chunked"], first_layer="inflate")
    text = str(report)
    assert text.startswith("LoadReport [clean]")
    assert re.search(r"adapted \(\d+\):", text) and "(+" in text  # grouped with example keys
    assert len(text.splitlines()) < 25


def test_own_encoder_checkpoint_into_backbone_fp16(tmp_path: Path) -> None:
    """A training checkpoint of an :class:`Encoder` ({'model': {'backbone.*', 'projector.*'}}) loads
    into a bare backbone; the projector is reported as ignored; fp16 tensors are cast.
    """
    enc = build_encoder("resnet18", 2, 16, 8)
    path = tmp_path / "softcon_epoch1.pth"
    torch.save({"model": {k: v.half() if v.is_floating_point() else v for k, v in enc.state_dict().items()}}, path)
    model, _ = build_backbone("resnet18", 2)
    report = load_weights(model, path, strict=True)
    assert "projector.net.0.weight" in report.ignored_keys
    assert model.conv1.weight.dtype == torch.float32
    torch.testing.assert_close(model.conv1.weight, enc.backbone.conv1.weight.half().float())
