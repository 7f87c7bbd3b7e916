"""How the training step calls a loss: the input contract every registered loss declares.

A pretraining step produces, per view ``v`` (0 or 1), the online projection ``z[v]``, the online
prediction ``q[v]`` (projection → predictor) and the EMA-target key ``k[v]`` (see
:mod:`train.pretrain`). Each loss class states, as the class attribute ``contract``, which of these
it takes and in which call shape (:class:`LossCall`); the training loop dispatches on that contract
only (:func:`call_loss`), never on the loss's name. Adding a loss therefore touches its own module
(the class and its ``contract``) and the registry in :mod:`train.losses`.

Example:
    >>> from train.losses.contract import LossCall, LossContract, Online
    >>> LossContract(LossCall.CROSS_VIEW, Online.PREDICTION, labelled=True)  # doctest: +ELLIPSIS
    LossContract(call=<LossCall.CROSS_VIEW: 'cross_view'>, ...)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["LossCall", "LossContract", "Online", "call_loss", "contract_of"]

Pair = tuple[Tensor, Tensor]


class Online(enum.Enum):
    """Which online embedding of each view the loss takes."""

    PROJECTION = "z"
    """The projector output ``z`` (SimCLR / SupCon style heads, MoCo v2)."""
    PREDICTION = "q"
    """The predictor output ``q`` (MoCo v3 / BYOL style asymmetric heads)."""


class LossCall(enum.Enum):
    """The call shape, with ``a`` the declared online embeddings and ``k`` the EMA-target keys.

    ``y`` (the labels) is appended as the last positional argument when the contract is ``labelled``.
    """

    CROSS_VIEW = "cross_view"
    """``loss(a[0], k[1], y) + loss(a[1], k[0], y)``: one direction per call, symmetrised by the step."""
    OWN_SYMMETRIC = "own_symmetric"
    """``loss.symmetric(a[0], a[1], k[0], k[1], y)``: the loss symmetrises itself (e.g. a queue that
    must be read once at the start of the step and filled once after both directions)."""
    VIEWS_AND_KEYS = "views_and_keys"
    """``loss(a[0], a[1], k[0], k[1], y)``: both views and both keys in one call (MoCo v3, BYOL)."""
    VIEW_PAIR = "view_pair"
    """``loss(a[0], a[1], y)``: the two views' online embeddings, no target (NT-Xent)."""
    STACKED_VIEWS = "stacked_views"
    """``loss(stack([a[0], a[1]], dim=1), y)``: a ``[B, 2, D]`` multi-view tensor (SupCon style)."""


@dataclass(frozen=True)
class LossContract:
    """What a loss needs from the training step.

    Attributes:
        call: the call shape (:class:`LossCall`).
        online: which online embedding (projection ``z`` or prediction ``q``) it takes.
        labelled: whether the step passes the batch's label vectors (last positional argument).
        gathers: whether the loss accepts ``gather_distributed`` (set to True under DDP unless the
            run's options say otherwise).
        class_counts: whether the loss is built with the training data's per-class label counts
            (keyword arguments ``class_counts`` and ``num_samples``).
        queue_dim: whether a loss with a queue needs ``dim`` (the projection width) when its
            options keep the queue (``queue_size`` not 0) and name no ``dim``.
    """

    call: LossCall
    online: Online
    labelled: bool = False
    gathers: bool = True
    class_counts: bool = False
    queue_dim: bool = False


def contract_of(loss_cls: type[nn.Module], name: str = "") -> LossContract:
    """The contract a loss class declares.

    Args:
        loss_cls: a loss class (or instance's type).
        name: the registry name, for the error message.

    Returns:
        The class attribute ``contract``.

    Raises:
        TypeError: the class declares no :class:`LossContract`.
    """
    contract = getattr(loss_cls, "contract", None)
    if not isinstance(contract, LossContract):
        label = f"loss {name!r} ({loss_cls.__name__})" if name else loss_cls.__name__
        raise TypeError(f"{label} declares no input contract: give the class an attribute "
                        "'contract = LossContract(...)' (train.losses.contract)")
    return contract


def call_loss(contract: LossContract, loss_fn: nn.Module, z: Pair, q: Pair, k: Pair, labels: Tensor) -> Tensor:
    """Apply ``loss_fn`` to a step's embeddings as ``contract`` says (index = view).

    Args:
        contract: the loss's declared contract.
        loss_fn: the loss module.
        z: online projections of both views.
        q: online predictions of both views.
        k: EMA-target keys of both views.
        labels: the batch's label vectors (passed only to ``labelled`` losses).

    Returns:
        The step's scalar loss.
    """
    a = z if contract.online is Online.PROJECTION else q
    y = (labels,) if contract.labelled else ()
    call = contract.call
    if call is LossCall.CROSS_VIEW:
        return loss_fn(a[0], k[1], *y) + loss_fn(a[1], k[0], *y)
    if call is LossCall.OWN_SYMMETRIC:
        return loss_fn.symmetric(a[0], a[1], k[0], k[1], *y)
    if call is LossCall.VIEWS_AND_KEYS:
        return loss_fn(a[0], a[1], k[0], k[1], *y)
    if call is LossCall.VIEW_PAIR:
        return loss_fn(a[0], a[1], *y)
    if call is LossCall.STACKED_VIEWS:
        return loss_fn(torch.stack([a[0], a[1]], dim=1), *y)
    raise ValueError(f"unknown loss call shape {call!r}")
