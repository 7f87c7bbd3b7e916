"""The record of a weight load: :class:`LoadReport`, :class:`ShapeMismatch`, :class:`WeightLoadError`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple


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
