"""Backbones, local weight loading, MoCo-v3 heads and Siamese masking for SoftCon pretraining.

Contents
--------
* **Backbone registry** (:data:`BACKBONES`, :func:`build_backbone`): timm ``resnet18``, ``resnet50``,
  ``vit_small_patch14_dinov2`` and ``vit_base_patch14_dinov2`` with any input channel count
  (13 = S2 L1C, 12 = S2 L2A, 2 = S1 GRD). Models are always created with ``pretrained=False``;
  weights come only from local files through :func:`load_weights`.
* **Weight loading** (:func:`load_weights` → :class:`LoadReport`): safetensors or ``torch.load(...,
  weights_only=True)``; unwraps checkpoint containers and prefixes; adapts the official DINOv2 ViT
  layout, the torchvision / DINO ResNet layout and the released SoftCon ``B13_*`` / ``B2_*``
  backbone-only state dicts to timm; resizes ``pos_embed``; applies a first-layer policy when the
  input channel count differs.
* **Heads** (:class:`ProjectionHead`, :class:`PredictionHead`) as in MoCo v3, and
  :func:`build_encoder` → :class:`Encoder` (``.backbone``, ``.projector``, optional ``.predictor``).
* **Siamese masking** (:func:`random_patch_mask`, :func:`vit_forward_masked`,
  :func:`zero_masked_patches`).

First-layer policy (``first_layer=``), applied only when the checkpoint's first layer has a
different input channel count than the model (same count → plain copy under either policy):

* ``"random"`` (default; the choice SoftCon reportedly made, softcon.md §0.4 [S]): the whole first
  layer (``conv1.weight``, or ``patch_embed.proj.weight`` *and* ``.bias``) keeps the fresh timm
  initialisation; everything else is copied.
* ``"inflate"``: a new kernel is built from the source kernel ``W`` (``O × Cs × k × k``). Target
  channels whose band name matches a source band copy that band's kernel; all other channels get the
  mean kernel ``mean_c W[:, c]``. The result is multiplied by ``Cs / C``. An RGB source
  (``Cs = 3``) is read as ``(B4, B3, B2)``, so with ``band_names`` the S2 red/green/blue bands
  receive the R/G/B kernels; without ``band_names`` (or when nothing matches, e.g. S1 VV/VH) every
  channel gets the mean kernel ("mean-tile"). The ``Cs / C`` factor keeps the summed kernel, hence
  the layer's response to a spectrally flat input, equal to the source layer's. The bias is copied
  unchanged.

Mask convention: :func:`random_patch_mask` returns ``True`` = **masked** (hidden from the online
branch). :func:`vit_forward_masked` takes the complement, ``keep_mask = ~mask``.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import timm
import torch
import torch.nn.functional as F
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipeline.bands import S1_GRD_BANDS, S2_L1C_BANDS

logger = logging.getLogger(__name__)

FirstLayerPolicy = Literal["random", "inflate"]
FIRST_LAYER_POLICIES: tuple[str, ...] = ("random", "inflate")

#: How an RGB first layer is read when band names are known: R→B4, G→B3, B→B2 (Sentinel-2).
RGB_AS_S2_BANDS: tuple[str, ...] = ("B4", "B3", "B2")

#: Source band orders assumed for the released SoftCon checkpoints, keyed by file-name prefix
#: (HF ``wangyi111/softcon``: ``B13_*`` = S2 L1C 13 bands, ``B2_*`` = S1 GRD VV/VH; softcon.md §0.9).
SOFTCON_CHECKPOINT_BANDS: dict[str, tuple[str, ...]] = {"B13_": S2_L1C_BANDS, "B2_": S1_GRD_BANDS}

#: MoCo-v3 head sizes (softcon.md §3.6, from the SSL4EO-S12 MoCo-v3 scripts).
MOCO_V3_HIDDEN: int = 4096
MOCO_V3_OUT: int = 256
#: Small head sizes for CPU smoke runs and tests.
CPU_HIDDEN: int = 512
CPU_OUT: int = 128

#: Default Siamese mask ratio. The paper value is UNVERIFIED (softcon.md §3.5): the method figure
#: shows about 2/3 of a 16×16 grid masked, but that is an illustration. 0.5 is the conservative
#: choice: FLIP (Li et al., 2023) found 50 % token dropping kept contrastive accuracy while roughly
#: halving the online branch's compute, and 75 % traded accuracy for speed. Pass ``ratio=`` to
#: change it (e.g. 0.67 to follow the figure).
DEFAULT_MASK_RATIO: float = 0.5
#: Mask cell size in pixels for CNNs: 14 px gives the 16×16 grid of the SoftCon figure at 224 px.
DEFAULT_CNN_MASK_PATCH: int = 14

#: Container keys descended into when a checkpoint is not a bare state dict, in priority order
#: (DINO/DINOv2 training checkpoints keep both ``teacher`` and ``student``; the teacher wins).
CONTAINER_KEYS: tuple[str, ...] = ("state_dict", "model", "teacher", "student")
#: Key prefixes removed from checkpoints. ``module.``/``_orig_mod.`` (DDP / torch.compile) are
#: stripped wherever present; for the others, when only some keys carry the prefix, only those keys
#: are kept (the rest — projection heads, DINO heads, momentum encoders — are reported as ignored).
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
SELECT_PREFIXES: tuple[str, ...] = ("backbone.", "base_encoder.", "encoder.")


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneSpec:
    """Registry entry for one backbone.

    Attributes:
        timm_name: Architecture name passed to :func:`timm.create_model`.
        family: ``"vit"`` or ``"resnet"``.
        feature_dim: Dimension of the pooled feature (ViT: final-norm CLS token; ResNet: GAP).
        patch_size: ViT patch size, or the CNN's output stride.
        default_img_size: Image size the ViT position grid is built for when none is given.
        init_source: Where SoftCon's continual pretraining starts from (softcon.md §4).
    """

    timm_name: str
    family: Literal["vit", "resnet"]
    feature_dim: int
    patch_size: int
    default_img_size: int = 224
    init_source: str = ""


BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec("resnet18", "resnet", 512, 32, init_source="torchvision layout"),
    "resnet50": BackboneSpec("resnet50", "resnet", 2048, 32, init_source="DINO ResNet-50"),
    "vit_small_patch14_dinov2": BackboneSpec(
        "vit_small_patch14_dinov2", "vit", 384, 14, init_source="DINOv2 ViT-S/14 (no registers)"
    ),
    "vit_base_patch14_dinov2": BackboneSpec(
        "vit_base_patch14_dinov2", "vit", 768, 14, init_source="DINOv2 ViT-B/14 (no registers)"
    ),
}
#: Short names used by the SoftCon release (``B13_rn50_softcon.pth``, ``B13_vits14_softcon.pth``).
BACKBONE_ALIASES: dict[str, str] = {
    "rn18": "resnet18",
    "rn50": "resnet50",
    "vits14": "vit_small_patch14_dinov2",
    "vitb14": "vit_base_patch14_dinov2",
}


def list_backbones() -> list[str]:
    """Registered backbone names (aliases excluded)."""
    return sorted(BACKBONES)


def get_backbone_spec(name: str) -> BackboneSpec:
    """Return the :class:`BackboneSpec` for ``name`` or an alias of it.

    Raises:
        KeyError: ``name`` is not registered.
    """
    key = BACKBONE_ALIASES.get(name, name)
    if key not in BACKBONES:
        known = ", ".join(list_backbones() + sorted(BACKBONE_ALIASES))
        raise KeyError(f"unknown backbone {name!r}; known: {known}")
    return BACKBONES[key]


def build_backbone(
    name: str,
    in_chans: int,
    img_size: int | tuple[int, int] | None = None,
    first_layer: FirstLayerPolicy = "random",
    weights: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    band_names: Sequence[str] | None = None,
    *,
    source_band_names: Sequence[str] | None = None,
    checkpoint_key: str | None = None,
    strict: bool = False,
    dynamic_img_size: bool = True,
    **timm_kwargs: Any,
) -> tuple[nn.Module, int]:
    """Create a registered timm backbone with ``in_chans`` inputs and no classifier.

    Args:
        name: Registry name or alias (see :data:`BACKBONES`, :data:`BACKBONE_ALIASES`).
        in_chans: Number of input channels (13 S2 L1C, 12 S2 L2A, 2 S1, 3 RGB, ...).
        img_size: ViT image size (default 224: a 16×16 grid at patch 14, as in SoftCon). Ignored
            by CNNs, which accept any size.
        first_layer: Policy for a checkpoint whose first layer has a different channel count
            (module docstring).
        weights: Optional local checkpoint path (or an in-memory state dict) for
            :func:`load_weights`. Remote URLs are refused.
        band_names: Names of the ``in_chans`` input bands, used by ``first_layer="inflate"``.
        source_band_names: Band names of the checkpoint's first layer, if not RGB and not a
            SoftCon ``B13_``/``B2_`` file.
        checkpoint_key: Container key to select in the checkpoint (e.g. ``"student"``).
        strict: Raise :class:`WeightLoadError` if the load is not clean.
        dynamic_img_size: ViT only: interpolate ``pos_embed`` on the fly for other input sizes.
        **timm_kwargs: Extra arguments for :func:`timm.create_model` (e.g. ``drop_path_rate``).

    Returns:
        ``(model, feature_dim)``; ``model(x)`` returns pooled ``(B, feature_dim)`` features. When
        ``weights`` is given the :class:`LoadReport` is attached as ``model.load_report``.
    """
    spec = get_backbone_spec(name)
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    _check_policy(first_layer)
    if band_names is not None and len(band_names) != in_chans:
        raise ValueError(f"{len(band_names)} band_names given for in_chans={in_chans}")
    if timm_kwargs.pop("pretrained", False):
        raise ValueError("pretrained=True would download from the hub; pass weights=<local file>")
    kwargs: dict[str, Any] = dict(pretrained=False, num_classes=0, in_chans=in_chans, **timm_kwargs)
    if spec.family == "vit":
        kwargs["img_size"] = spec.default_img_size if img_size is None else img_size
        kwargs["dynamic_img_size"] = dynamic_img_size
    model = timm.create_model(spec.timm_name, **kwargs)
    feature_dim = int(model.num_features)
    if feature_dim != spec.feature_dim:  # pragma: no cover - guards against timm changes
        raise RuntimeError(f"{name}: timm reports {feature_dim} features, registry {spec.feature_dim}")
    if weights is not None:
        report = load_weights(
            model,
            weights,
            first_layer=first_layer,
            band_names=band_names,
            source_band_names=source_band_names,
            checkpoint_key=checkpoint_key,
            strict=strict,
        )
        model.load_report = report
        logger.info("%s", report)
        if not report.ok:
            logger.warning("weights for %s did not load cleanly:\n%s", name, report)
    return model, feature_dim


# --------------------------------------------------------------------------------------------
# Load report
# --------------------------------------------------------------------------------------------


class WeightLoadError(RuntimeError):
    """A checkpoint could not be read, or a ``strict`` load was not clean."""


class ShapeMismatch(NamedTuple):
    """A checkpoint tensor whose shape differs from the model's."""

    source_shape: tuple[int, ...]
    model_shape: tuple[int, ...]
    action: str
    resolved: bool


@dataclass
class LoadReport:
    """What :func:`load_weights` did, key by key (keys are model-side names unless noted).

    Attributes:
        source: Checkpoint path (or ``"<state dict>"``).
        layout: Detected source layout (``dinov2-official``, ``timm-vit``, ``torchvision-resnet``...).
        container: Container keys descended into (``["teacher"]``) and prefixes stripped.
        loaded_keys: Model keys that received a checkpoint tensor (adapted ones included).
        missing_keys: Model keys the checkpoint did not provide (new first layers excluded).
        unexpected_keys: Checkpoint keys (after renaming) with no place in the model.
        adapted_keys: Model key → how it was adapted (renamed, resized, inflated).
        shape_mismatched_keys: Model key → :class:`ShapeMismatch`; ``resolved`` entries were
            handled (interpolation, first-layer policy), the others kept the model's init.
        ignored_keys: Checkpoint key → why it was dropped on purpose (DINOv2 ``mask_token``,
            classifier ``fc``, heads outside the selected backbone prefix, ...).
        notes: Free-form remarks (assumed band orders, ...).
    """

    source: str = "<state dict>"
    layout: str = "unknown"
    container: list[str] = field(default_factory=list)
    loaded_keys: list[str] = field(default_factory=list)
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    adapted_keys: dict[str, str] = field(default_factory=dict)
    shape_mismatched_keys: dict[str, ShapeMismatch] = field(default_factory=dict)
    ignored_keys: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def unresolved_mismatches(self) -> dict[str, ShapeMismatch]:
        """Shape mismatches that were skipped (the model kept its own initialisation)."""
        return {k: v for k, v in self.shape_mismatched_keys.items() if not v.resolved}

    @property
    def ok(self) -> bool:
        """True when nothing is missing or unexpected and every shape mismatch was resolved."""
        return not (self.missing_keys or self.unexpected_keys or self.unresolved_mismatches)

    def __str__(self) -> str:
        status = "clean" if self.ok else "NOT CLEAN"
        lines = [f"LoadReport [{status}] source={self.source} layout={self.layout}"]
        if self.container:
            lines.append(f"  unwrapped: {' -> '.join(self.container)}")
        lines.append(f"  loaded: {len(self.loaded_keys)} tensors")
        if self.shape_mismatched_keys:
            lines.append(f"  shape-mismatched ({len(self.shape_mismatched_keys)}):")
            for key, mm in self.shape_mismatched_keys.items():
                flag = "" if mm.resolved else " [UNRESOLVED]"
                lines.append(
                    f"    {key}: checkpoint {tuple(mm.source_shape)} vs model "
                    f"{tuple(mm.model_shape)} -> {mm.action}{flag}"
                )
        lines += _grouped("adapted", self.adapted_keys)
        lines += _grouped("ignored", self.ignored_keys)
        for title, keys in (("missing", self.missing_keys), ("unexpected", self.unexpected_keys)):
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... (+{len(keys) - 12})" if len(keys) > 12 else "")
                lines.append(f"  {title} ({len(keys)}): {shown}")
            else:
                lines.append(f"  {title}: none")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _grouped(title: str, entries: Mapping[str, str], examples: int = 3) -> list[str]:
    """Report lines for ``key → reason`` entries, grouped by reason with a few example keys."""
    if not entries:
        return []
    groups: dict[str, list[str]] = {}
    for key, reason in entries.items():
        groups.setdefault(reason, []).append(key)
    lines = [f"  {title} ({len(entries)}):"]
    for reason, keys in groups.items():
        shown = ", ".join(keys[:examples]) + (f", ... (+{len(keys) - examples})" if len(keys) > examples else "")
        lines.append(f"    {reason}: {shown}")
    return lines


# --------------------------------------------------------------------------------------------
# Reading and unwrapping checkpoints
# --------------------------------------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Read a local checkpoint on CPU without executing pickled code.

    ``.safetensors`` files go through :func:`safetensors.torch.load_file`; anything else through
    ``torch.load(path, map_location="cpu", weights_only=True)``, which only rebuilds tensors and
    plain containers.

    Raises:
        ValueError: ``path`` is a URL (only local files are accepted).
        FileNotFoundError: ``path`` does not exist.
        WeightLoadError: the pickle holds objects ``weights_only`` refuses, or the file is unreadable.
    """
    text = os.fspath(path)
    if re.match(r"^[a-z][a-z0-9+.-]*://", text, flags=re.IGNORECASE):
        raise ValueError(f"only local checkpoint files are supported, got {text!r}")
    p = Path(text)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p), device="cpu")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightLoadError(
            f"{p}: refused by torch.load(weights_only=True); the file contains objects other than "
            f"tensors and plain containers. Re-save it as a bare state dict or safetensors. ({err})"
        ) from err


def unwrap_state_dict(
    obj: Any, checkpoint_key: str | None = None, trail: list[str] | None = None
) -> dict[str, torch.Tensor]:
    """Descend into checkpoint containers until a ``{name: tensor}`` mapping is reached.

    Args:
        obj: What :func:`read_checkpoint` returned.
        checkpoint_key: Container key to take first (dotted for nesting, e.g. ``"ema.model"``);
            otherwise :data:`CONTAINER_KEYS` are tried in order.
        trail: Optional list that receives the keys descended into.

    Returns:
        The tensor entries of the innermost mapping (non-tensor entries such as ``epoch`` dropped).
    """
    trail = [] if trail is None else trail
    if checkpoint_key:
        for part in checkpoint_key.split("."):
            if not isinstance(obj, Mapping) or part not in obj:
                raise KeyError(f"checkpoint has no container {checkpoint_key!r}")
            obj = obj[part]
            trail.append(part)
    while isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        for key in CONTAINER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                trail.append(key)
                break
        else:
            break
    if not isinstance(obj, Mapping):
        raise WeightLoadError(f"checkpoint is a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightLoadError(
            f"no tensors found (top-level keys: {list(obj)[:10]}); pass checkpoint_key= to pick one"
        )
    return tensors


def _is_tensor_dict(obj: Mapping[Any, Any]) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefixes(
    sd: dict[str, torch.Tensor], model_keys: set[str], report: LoadReport
) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes and select the backbone sub-dict (see :data:`SELECT_PREFIXES`)."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES + SELECT_PREFIXES:
            if any(k.startswith(prefix) for k in model_keys):
                continue  # the model itself uses this prefix (e.g. loading into an Encoder)
            hits = [k for k in sd if k.startswith(prefix)]
            if not hits:
                continue
            if prefix in WRAPPER_PREFIXES or len(hits) == len(sd):
                sd = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}
            else:
                for k in sd:
                    if not k.startswith(prefix):
                        report.ignored_keys[k] = f"outside the '{prefix}' sub-dict"
                sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            report.container.append(f"strip '{prefix}'")
            changed = True
    return sd


# --------------------------------------------------------------------------------------------
# Key-layout adapters
# --------------------------------------------------------------------------------------------

_CHUNKED_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.(.+)$")


def _adapt_vit(
    sd: dict[str, torch.Tensor], model: VisionTransformer, report: LoadReport
) -> dict[str, torch.Tensor]:
    """Official DINOv2 (``facebookresearch/dinov2``) or timm ViT layout → timm ``VisionTransformer``.

    * ``blocks.<chunk>.<i>.*`` (``block_chunks > 0`` training checkpoints) → ``blocks.<i>.*``
      (DINOv2 chunks keep global block indices, so only the chunk level is removed);
    * ``register_tokens`` → ``reg_token``;
    * ``mask_token`` (DINOv2/iBOT masked-token embedding; timm has none) → ignored;
    * ``head.*`` → ignored when the model has no classifier;
    * ``pos_embed`` → resized to the model's grid by :func:`resize_pos_embed` when needed;
    * everything else (``patch_embed.proj``, ``blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,
      mlp.fc1,mlp.fc2,ls2.gamma}``, ``norm``, ``cls_token``) has the same names in both layouts.
    """
    model_sd = model.state_dict()
    official = any(_CHUNKED_BLOCK.match(k) for k in sd) or "mask_token" in sd or "register_tokens" in sd
    report.layout = "dinov2-official" if official else "timm-vit"
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        match = _CHUNKED_BLOCK.match(key)
        if match:
            new = f"blocks.{match.group(2)}.{match.group(3)}"
            report.adapted_keys[new] = "renamed blocks.<chunk>.<i>.* -> blocks.<i>.* (DINOv2 chunks)"
        elif key == "register_tokens" and "reg_token" in model_sd:
            new = "reg_token"
            report.adapted_keys[new] = "renamed register_tokens -> reg_token"
        elif key == "mask_token" and key not in model_sd:
            report.ignored_keys[key] = "DINOv2 mask token (no counterpart in timm ViT)"
            continue
        elif key.startswith("head.") and key not in model_sd:
            report.ignored_keys[key] = "classifier/projection head (model has num_classes=0)"
            continue
        else:
            new = key
        out[new] = value

    pos = out.get("pos_embed")
    target = model_sd.get("pos_embed")
    if pos is not None and target is not None and pos.shape != target.shape:
        prefix = 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
        n_src = pos.shape[1] - prefix
        side = math.isqrt(max(n_src, 0))
        grid = tuple(int(g) for g in model.patch_embed.grid_size)
        if pos.ndim == 3 and pos.shape[-1] == target.shape[-1] and side * side == n_src > 0:
            out["pos_embed"] = resize_pos_embed(pos, grid, num_prefix_tokens=prefix)
            action = f"bicubic resize {side}x{side} -> {grid[0]}x{grid[1]} grid"
            report.adapted_keys["pos_embed"] = action
            report.shape_mismatched_keys["pos_embed"] = ShapeMismatch(
                tuple(pos.shape), tuple(target.shape), action, True
            )
    return out


def _adapt_resnet(
    sd: dict[str, torch.Tensor], model: ResNet, report: LoadReport
) -> dict[str, torch.Tensor]:
    """torchvision / DINO / SoftCon ResNet layout → timm ``ResNet``.

    timm's ResNet uses torchvision's names (``conv1``, ``bn1``, ``layerK.J.{conv1..3,bn1..3,
    downsample.0,downsample.1}``), so the only change is dropping the classifier ``fc.*``, which a
    ``num_classes=0`` model replaces by ``Identity`` (SoftCon's RN50 files already have none).
    """
    model_keys = set(model.state_dict())
    report.layout = "torchvision-resnet"
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith(("fc.", "head.")) and key not in model_keys:
            report.ignored_keys[key] = "classifier/projection head (model has num_classes=0)"
            continue
        out[key] = value
    return out


def resize_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    num_prefix_tokens: int = 1,
    *,
    old_grid: tuple[int, int] | None = None,
    mode: str = "bicubic",
    antialias: bool = False,
) -> torch.Tensor:
    """Interpolate an absolute position embedding ``(1, P + H*W, D)`` to a new ``H' × W'`` grid.

    The ``P`` prefix entries (CLS) are kept as they are; the grid part is reshaped to an image and
    resampled with ``F.interpolate`` (bicubic, ``align_corners=False``, no antialias: the settings
    DINOv2 uses when it interpolates at run time; DINOv2 additionally adds a 0.1 offset to the scale
    factor, which is not reproduced here).
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    n = grid.shape[1]
    if old_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"cannot infer a square grid from {n} position tokens; pass old_grid")
        old_grid = (side, side)
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed.clone()
    dim = grid.shape[-1]
    image = grid.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2).float()
    image = F.interpolate(image, size=tuple(new_grid), mode=mode, align_corners=False, antialias=antialias)
    grid = image.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


# --------------------------------------------------------------------------------------------
# First layer
# --------------------------------------------------------------------------------------------


def _check_policy(policy: str) -> None:
    if policy not in FIRST_LAYER_POLICIES:
        raise ValueError(f"first_layer must be one of {FIRST_LAYER_POLICIES}, got {policy!r}")


def normalize_band_name(name: str) -> str:
    """Canonical band spelling: ``"b04"`` → ``"B4"``, ``"B8a"`` → ``"B8A"``, ``"vv"`` → ``"VV"``."""
    text = name.strip().upper()
    match = re.fullmatch(r"B0*(\d+)(A?)", text)
    return f"B{match.group(1)}{match.group(2)}" if match else text


def first_layer_keys(model: nn.Module) -> tuple[str, ...]:
    """State-dict keys of the input layer (weight first, then bias if any)."""
    if isinstance(model, VisionTransformer):
        keys = ("patch_embed.proj.weight", "patch_embed.proj.bias")
    elif isinstance(model, ResNet):
        keys = ("conv1.weight", "conv1.bias")
    else:
        first = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
        if first is None:
            return ()
        keys = (f"{first}.weight", f"{first}.bias")
    present = set(model.state_dict())
    return tuple(k for k in keys if k in present)


def inflate_first_layer(
    weight: torch.Tensor,
    in_chans: int,
    *,
    band_names: Sequence[str] | None = None,
    source_band_names: Sequence[str] | None = None,
) -> tuple[torch.Tensor, str]:
    """Build an ``O × in_chans × k × k`` kernel from an ``O × Cs × k × k`` one (module docstring).

    Returns:
        The new kernel (same dtype as ``weight``) and a one-line description for the report.
    """
    out_ch, src_ch = weight.shape[:2]
    w = weight.float()
    mean = w.mean(dim=1, keepdim=True)
    new = mean.expand(out_ch, in_chans, *w.shape[2:]).clone()
    if source_band_names is None and src_ch == 3:
        source_band_names = RGB_AS_S2_BANDS
    matched: list[str] = []
    if band_names is not None and source_band_names is not None:
        if len(band_names) != in_chans:
            raise ValueError(f"{len(band_names)} band_names for {in_chans} channels")
        if len(source_band_names) != src_ch:
            raise ValueError(f"{len(source_band_names)} source_band_names for {src_ch} channels")
        index = {normalize_band_name(b): i for i, b in enumerate(source_band_names)}
        for j, band in enumerate(band_names):
            i = index.get(normalize_band_name(band))
            if i is not None:
                new[:, j] = w[:, i]
                matched.append(f"{band}<-{source_band_names[i]}")
    scale = src_ch / in_chans
    new = new * scale
    if matched:
        how = f"inflate: copied {', '.join(matched)}; other channels mean kernel; x{src_ch}/{in_chans}"
    else:
        how = f"inflate: mean kernel tiled over {in_chans} channels; x{src_ch}/{in_chans}"
    return new.to(weight.dtype), how


def _source_bands_for(source: str, report: LoadReport) -> tuple[str, ...] | None:
    name = Path(source).name
    for prefix, bands in SOFTCON_CHECKPOINT_BANDS.items():
        if name.startswith(prefix):
            report.notes.append(f"assumed source bands {','.join(bands)} from file name prefix {prefix!r}")
            return bands
    return None


# --------------------------------------------------------------------------------------------
# load_weights
# --------------------------------------------------------------------------------------------


def load_weights(
    model: nn.Module,
    path: str | os.PathLike[str] | Mapping[str, Any],
    *,
    first_layer: FirstLayerPolicy = "random",
    band_names: Sequence[str] | None = None,
    source_band_names: Sequence[str] | None = None,
    checkpoint_key: str | None = None,
    strict: bool = False,
) -> LoadReport:
    """Load a local checkpoint into a timm backbone, adapting key layouts; returns a report.

    Steps: read (:func:`read_checkpoint`) → unwrap containers (:func:`unwrap_state_dict`) → strip
    ``module.``/``_orig_mod.`` and select ``backbone.``/``base_encoder.``/``encoder.`` sub-dicts →
    layout adapter (DINOv2/timm ViT or torchvision ResNet) → shape checks, ``pos_embed``
    interpolation and the first-layer policy → ``model.load_state_dict(strict=False)``.

    Args:
        model: A timm ``VisionTransformer`` or ``ResNet`` (other modules get name-for-name loading).
        path: Local ``.safetensors`` / ``.pth`` / ``.pt`` file, or an in-memory state dict.
        first_layer: ``"random"`` or ``"inflate"``; used only when the checkpoint's first layer
            has a different input channel count.
        band_names: Names of the model's input bands (for ``"inflate"``).
        source_band_names: Names of the checkpoint's input bands. Defaults: RGB = ``(B4, B3, B2)``;
            ``B13_*`` files = S2 L1C order; ``B2_*`` files = ``(VV, VH)``.
        checkpoint_key: Container to select (e.g. ``"student"``) instead of the default order.
        strict: Raise :class:`WeightLoadError` (message = the report) unless ``report.ok``.
            Channel mismatches handled by the first-layer policy do not count as failures.
    """
    _check_policy(first_layer)
    if isinstance(path, Mapping):
        report = LoadReport()
        raw: Any = path
    else:
        report = LoadReport(source=os.fspath(path))
        raw = read_checkpoint(path)
    sd = unwrap_state_dict(raw, checkpoint_key, report.container)
    model_sd = model.state_dict()
    sd = _strip_prefixes(sd, set(model_sd), report)

    if isinstance(model, VisionTransformer):
        sd = _adapt_vit(sd, model, report)
    elif isinstance(model, ResNet):
        sd = _adapt_resnet(sd, model, report)
    else:
        report.layout = "as-is"

    first_keys = first_layer_keys(model)
    weight_key = first_keys[0] if first_keys else None
    bias_key = first_keys[1] if len(first_keys) > 1 else None
    policy_skipped: set[str] = set()
    to_load: dict[str, torch.Tensor] = {}

    for key, value in sd.items():
        if key not in model_sd:
            report.unexpected_keys.append(key)
            continue
        target = model_sd[key]
        if value.shape == target.shape:
            to_load[key] = value
            continue
        src_shape, dst_shape = tuple(value.shape), tuple(target.shape)
        channel_mismatch = (
            key == weight_key
            and value.ndim == target.ndim == 4
            and src_shape[0] == dst_shape[0]
            and src_shape[2:] == dst_shape[2:]
        )
        if not channel_mismatch:
            report.shape_mismatched_keys[key] = ShapeMismatch(
                src_shape, dst_shape, "skipped (model keeps its init)", False
            )
            continue
        if first_layer == "random":
            policy_skipped.add(key)
            report.shape_mismatched_keys[key] = ShapeMismatch(
                src_shape, dst_shape, "first layer kept random init (policy 'random')", True
            )
            continue
        src_bands = source_band_names
        if src_bands is None and src_shape[1] != 3:
            src_bands = _source_bands_for(report.source, report)
        new, how = inflate_first_layer(
            value, dst_shape[1], band_names=band_names, source_band_names=src_bands
        )
        to_load[key] = new
        report.adapted_keys[key] = how
        report.shape_mismatched_keys[key] = ShapeMismatch(src_shape, dst_shape, how, True)

    if bias_key is not None and weight_key in policy_skipped and bias_key in to_load:
        del to_load[bias_key]
        policy_skipped.add(bias_key)
        report.ignored_keys[bias_key] = "first-layer bias kept random init (policy 'random')"

    result = model.load_state_dict(to_load, strict=False)
    report.loaded_keys = sorted(to_load)
    for key in result.missing_keys:
        if key in policy_skipped or key in report.shape_mismatched_keys:
            continue
        if key.endswith("num_batches_tracked"):
            report.ignored_keys.setdefault(key, "BN step counter absent from checkpoint (left at 0)")
            continue
        report.missing_keys.append(key)
    # load_state_dict(strict=False) cannot report unexpected keys we filtered out already.
    if strict and not report.ok:
        raise WeightLoadError(f"strict load failed:\n{report}")
    return report


# --------------------------------------------------------------------------------------------
# Heads and encoder
# --------------------------------------------------------------------------------------------


def _mlp(in_dim: int, hidden: int, out: int, layers: int, last_bn: bool) -> nn.Sequential:
    """MoCo-v3 MLP: ``layers`` bias-free Linear layers; BN+ReLU between; optional affine-free BN."""
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    mods: list[nn.Module] = []
    dim = in_dim
    for i in range(layers):
        last = i == layers - 1
        nxt = out if last else hidden
        mods.append(nn.Linear(dim, nxt, bias=False))
        if not last:
            mods += [nn.BatchNorm1d(nxt), nn.ReLU(inplace=True)]
        elif last_bn:
            mods.append(nn.BatchNorm1d(nxt, affine=False))
        dim = nxt
    return nn.Sequential(*mods)


class ProjectionHead(nn.Module):
    """MoCo-v3 projector: ``layers`` × (Linear → BN → ReLU), the last Linear followed by BN
    without affine parameters. MoCo v3 uses 3 layers for ViT and 2 for ResNet, hidden 4096,
    output 256 (softcon.md §3.6); use :data:`CPU_HIDDEN` / :data:`CPU_OUT` for smoke runs.

    Shapes: ``(B, in_dim)`` → ``(B, out)``. BatchNorm needs ``B > 1`` in training mode.
    """

    def __init__(
        self, in_dim: int, hidden: int = MOCO_V3_HIDDEN, out: int = MOCO_V3_OUT, layers: int = 3
    ) -> None:
        super().__init__()
        self.in_dim, self.hidden, self.out_dim = in_dim, hidden, out
        self.net = _mlp(in_dim, hidden, out, layers, last_bn=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PredictionHead(nn.Module):
    """MoCo-v3 predictor: Linear → BN → ReLU → Linear (no final BN), ``dim → hidden → dim``.

    Shapes: ``(B, dim)`` → ``(B, dim)``.
    """

    def __init__(self, dim: int = MOCO_V3_OUT, hidden: int = MOCO_V3_HIDDEN, layers: int = 2) -> None:
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.net = _mlp(dim, hidden, dim, layers, last_bn=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Encoder(nn.Module):
    """Backbone + MoCo-v3 projector (+ optional predictor) for one SoftCon branch.

    Attributes:
        backbone: timm model returning pooled ``(B, feature_dim)`` features.
        projector: :class:`ProjectionHead`.
        predictor: :class:`PredictionHead` or ``None`` (only the online branch needs one; build
            the EMA target with ``pred_hidden=None`` or ignore its predictor).
        family: ``"vit"`` or ``"resnet"``.
        mask_patch_size: Pixel size of a mask cell (ViT: its patch size).
    """

    def __init__(
        self,
        backbone: nn.Module,
        feature_dim: int,
        projector: ProjectionHead,
        *,
        family: str,
        mask_patch_size: int,
        predictor: PredictionHead | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.predictor = predictor
        self.feature_dim = feature_dim
        self.family = family
        self.mask_patch_size = mask_patch_size

    def mask_grid(self, height: int, width: int) -> tuple[int, int]:
        """Mask grid ``(grid_h, grid_w)`` for an input of ``height × width`` pixels."""
        p = self.mask_patch_size
        if self.family == "vit":
            return height // p, width // p
        return math.ceil(height / p), math.ceil(width / p)

    def features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled backbone features ``(B, feature_dim)``.

        Args:
            x: ``(B, C, H, W)`` input.
            mask: Optional ``(B, grid_h * grid_w)`` bool mask, ``True`` = masked (as returned by
                :func:`random_patch_mask` for :meth:`mask_grid`). ViTs drop the masked tokens;
                CNNs see the masked cells zeroed.
        """
        if mask is None:
            return self.backbone(x)
        if self.family == "vit":
            return vit_forward_masked(self.backbone, x, ~mask.reshape(mask.shape[0], -1))
        return self.backbone(zero_masked_patches(x, mask, self.mask_patch_size))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Projection ``(B, proj_out)`` of :meth:`features`."""
        return self.projector(self.features(x, mask))

    def predict(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Predictor output on the projection (online branch)."""
        if self.predictor is None:
            raise RuntimeError("this encoder was built without a predictor (pred_hidden=None)")
        return self.predictor(self(x, mask))


def build_encoder(
    backbone_name: str,
    in_chans: int,
    proj_hidden: int = MOCO_V3_HIDDEN,
    proj_out: int = MOCO_V3_OUT,
    *,
    proj_layers: int | None = None,
    pred_hidden: int | None = None,
    mask_patch_size: int | None = None,
    img_size: int | tuple[int, int] | None = None,
    first_layer: FirstLayerPolicy = "random",
    weights: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    band_names: Sequence[str] | None = None,
    **backbone_kwargs: Any,
) -> Encoder:
    """Backbone from :func:`build_backbone` plus MoCo-v3 heads.

    Args:
        backbone_name: Registry name or alias.
        in_chans: Input channels.
        proj_hidden: Projector hidden width (MoCo v3: 4096).
        proj_out: Projector output width (MoCo v3: 256).
        proj_layers: Projector depth; default 3 for ViT, 2 for ResNet (MoCo v3).
        pred_hidden: If given, add a :class:`PredictionHead` ``proj_out → pred_hidden → proj_out``.
        mask_patch_size: Mask cell size; ViT: must equal the patch size (default); CNN default
            :data:`DEFAULT_CNN_MASK_PATCH`.
        img_size, first_layer, weights, band_names, **backbone_kwargs: passed to
            :func:`build_backbone`.
    """
    spec = get_backbone_spec(backbone_name)
    backbone, dim = build_backbone(
        backbone_name,
        in_chans,
        img_size=img_size,
        first_layer=first_layer,
        weights=weights,
        band_names=band_names,
        **backbone_kwargs,
    )
    if spec.family == "vit":
        patch = int(backbone.patch_embed.patch_size[0])
        if mask_patch_size not in (None, patch):
            raise ValueError(f"ViT mask cells must equal the patch size ({patch}), got {mask_patch_size}")
        mask_patch_size = patch
    elif mask_patch_size is None:
        mask_patch_size = DEFAULT_CNN_MASK_PATCH
    layers = proj_layers if proj_layers is not None else (3 if spec.family == "vit" else 2)
    projector = ProjectionHead(dim, proj_hidden, proj_out, layers=layers)
    predictor = PredictionHead(proj_out, pred_hidden) if pred_hidden is not None else None
    return Encoder(
        backbone,
        dim,
        projector,
        family=spec.family,
        mask_patch_size=mask_patch_size,
        predictor=predictor,
    )


# --------------------------------------------------------------------------------------------
# Siamese masking
# --------------------------------------------------------------------------------------------


def random_patch_mask(
    batch: int,
    grid_h: int,
    grid_w: int,
    ratio: float = DEFAULT_MASK_RATIO,
    generator: torch.Generator | None = None,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random patch mask, ``True`` = masked, with exactly ``round(ratio * N)`` masked cells per row.

    Every sample masks the same number of cells (so a ViT can drop them and keep a dense batch);
    at least one cell stays visible. Cells are flattened row-major (``index = row * grid_w + col``),
    the order of ViT patch tokens.

    Args:
        batch: Number of samples ``B``.
        grid_h, grid_w: Mask grid (ViT: patch grid; see :meth:`Encoder.mask_grid`).
        ratio: Fraction of cells to mask, ``0 <= ratio < 1`` (default :data:`DEFAULT_MASK_RATIO`;
            the paper's value is UNVERIFIED).
        generator: Optional ``torch.Generator`` for reproducible masks; the mask is drawn on its
            device and then moved to ``device``.
        device: Output device (default: the generator's device, else CPU).

    Returns:
        Bool tensor ``(B, grid_h * grid_w)``.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    if batch < 0 or grid_h < 1 or grid_w < 1:
        raise ValueError(f"invalid mask shape batch={batch}, grid={grid_h}x{grid_w}")
    n = grid_h * grid_w
    n_masked = min(int(math.floor(ratio * n + 0.5)), n - 1)
    draw_device = generator.device if generator is not None else (device or "cpu")
    noise = torch.rand(batch, n, generator=generator, device=draw_device)
    mask = torch.zeros(batch, n, dtype=torch.bool, device=draw_device)
    if n_masked > 0:
        mask.scatter_(1, noise.argsort(dim=1)[:, :n_masked], True)
    return mask if device is None else mask.to(device)


def vit_forward_masked(
    model: VisionTransformer, x: torch.Tensor, keep_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """timm ViT forward that drops masked patch tokens; returns pooled features ``(B, D)``.

    Follows ``forward_features`` + ``forward_head(pre_logits=True)``: patch embedding, prefix
    tokens (CLS, registers) and positional embedding; then only the prefix tokens and the *kept*
    patch tokens (each with its own positional embedding, order preserved) go through the blocks;
    final norm; pooling as configured in timm (CLS token for DINOv2 models). With
    ``keep_mask=None`` or all ``True`` this equals ``model(x)`` for a ``num_classes=0`` model.

    Args:
        model: timm ``VisionTransformer``.
        x: ``(B, C, H, W)`` input.
        keep_mask: Bool ``(B, N)`` or ``(B, grid_h, grid_w)``, ``True`` = keep; every row must
            keep the same number of patches.
    """
    tokens = model.patch_embed(x)
    n_patches = tokens.shape[1] * tokens.shape[2] if tokens.ndim == 4 else tokens.shape[1]
    tokens = model._pos_embed(tokens)  # (B, prefix + N, D), positional embedding added
    tokens = model.patch_drop(tokens)
    tokens = model.norm_pre(tokens)
    if keep_mask is not None:
        batch, dim = tokens.shape[0], tokens.shape[-1]
        keep = keep_mask.reshape(keep_mask.shape[0], -1).to(device=tokens.device, dtype=torch.bool)
        if keep.shape != (batch, n_patches):
            raise ValueError(f"keep_mask has shape {tuple(keep_mask.shape)}, expected ({batch}, {n_patches})")
        counts = keep.sum(dim=1)
        if bool((counts != counts[0]).any()):
            raise ValueError("every sample must keep the same number of patches")
        n_prefix = tokens.shape[1] - n_patches
        prefix, patches = tokens[:, :n_prefix], tokens[:, n_prefix:]
        kept = patches[keep].reshape(batch, int(counts[0]), dim)  # row-major: token order preserved
        tokens = torch.cat([prefix, kept], dim=1)
    if getattr(model, "grad_checkpointing", False) and torch.is_grad_enabled():
        for blk in model.blocks:
            tokens = checkpoint(blk, tokens, use_reentrant=False)
    else:
        tokens = model.blocks(tokens)
    tokens = model.norm(tokens)
    return model.forward_head(tokens, pre_logits=True)


def zero_masked_patches(
    x: torch.Tensor, mask: torch.Tensor, patch_size: int, fill: float = 0.0
) -> torch.Tensor:
    """Set the pixels of masked cells to ``fill`` (CNN Siamese masking, as drawn in the figure).

    The grid is ``ceil(H / patch_size) × ceil(W / patch_size)``; edge cells may be partial.
    Applied to the normalised network input, so 0 is the normalised value, not raw DN.

    Args:
        x: ``(B, C, H, W)``.
        mask: Bool ``(B, grid_h * grid_w)`` or ``(B, grid_h, grid_w)``, ``True`` = masked.
        patch_size: Cell size in pixels.
        fill: Value written into masked cells.
    """
    batch, _, height, width = x.shape
    gh, gw = math.ceil(height / patch_size), math.ceil(width / patch_size)
    if mask.numel() != batch * gh * gw:
        raise ValueError(f"mask with {mask.numel()} cells does not fit a {batch}x{gh}x{gw} grid")
    cells = mask.reshape(batch, gh, gw).to(device=x.device, dtype=torch.bool)
    pixels = cells.repeat_interleave(patch_size, dim=1).repeat_interleave(patch_size, dim=2)
    pixels = pixels[:, :height, :width].unsqueeze(1)
    return x.masked_fill(pixels, fill)


__all__ = [
    "BACKBONES",
    "BACKBONE_ALIASES",
    "CPU_HIDDEN",
    "CPU_OUT",
    "DEFAULT_CNN_MASK_PATCH",
    "DEFAULT_MASK_RATIO",
    "FIRST_LAYER_POLICIES",
    "MOCO_V3_HIDDEN",
    "MOCO_V3_OUT",
    "BackboneSpec",
    "Encoder",
    "LoadReport",
    "PredictionHead",
    "ProjectionHead",
    "ShapeMismatch",
    "WeightLoadError",
    "build_backbone",
    "build_encoder",
    "first_layer_keys",
    "get_backbone_spec",
    "inflate_first_layer",
    "list_backbones",
    "load_weights",
    "normalize_band_name",
    "random_patch_mask",
    "read_checkpoint",
    "resize_pos_embed",
    "unwrap_state_dict",
    "vit_forward_masked",
    "zero_masked_patches",
]
