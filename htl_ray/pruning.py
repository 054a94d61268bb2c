"""Pruned copies of a model snapshot (docs/method.md §Scoring), never touching the dense model.

- `l1_unstructured` (default): global L1 magnitude pruning over the weights of every conv and
  linear layer (`torch.nn.utils.prune.global_unstructured`), so the measured sparsity equals the
  target up to one weight.
- `channel_l2`: structured pruning of whole output channels by L2 norm, layer by layer
  (`prune.ln_structured`); measured sparsity is reported (rounding to whole channels per layer
  makes it approximate).

The pruning masks are made permanent (`prune.remove`), so a pruned copy is a plain model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import prune

PRUNABLE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def prunable_parameters(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, "weight") for every conv / linear layer."""
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def measured_sparsity(model: nn.Module) -> float:
    """Fraction of exactly-zero weights over all prunable weights."""
    zeros, total = 0, 0
    for module, name in prunable_parameters(model):
        w = getattr(module, name)
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros / total if total else 0.0


def _l1_unstructured(model: nn.Module, sparsity: float) -> None:
    prune.global_unstructured(prunable_parameters(model), pruning_method=prune.L1Unstructured,
                              amount=sparsity)


def _channel_l2(model: nn.Module, sparsity: float) -> None:
    for module, name in prunable_parameters(model):
        if getattr(module, name).shape[0] > 1:
            prune.ln_structured(module, name, amount=sparsity, n=2, dim=0)


PRUNING_METHODS: dict[str, Callable[[nn.Module, float], None]] = {
    "l1_unstructured": _l1_unstructured,
    "channel_l2": _channel_l2,
}


def pruned_copy(model: nn.Module, sparsity: float, method: str = "l1_unstructured") -> nn.Module:
    """A deep copy of `model` pruned to `sparsity` with `method`; `model` is left unchanged."""
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity {sparsity}: expected a value in (0, 1)")
    if method not in PRUNING_METHODS:
        raise ValueError(f"pruning method {method!r}: expected one of {sorted(PRUNING_METHODS)}")
    clone = copy.deepcopy(model)
    PRUNING_METHODS[method](clone, sparsity)
    for module, name in prunable_parameters(clone):
        if prune.is_pruned(module):
            prune.remove(module, name)
    return clone.eval()


def pruned_copies(model: nn.Module, sparsities: Iterable[float],
                  method: str = "l1_unstructured") -> dict[float, nn.Module]:
    """One pruned copy per sparsity. For global L1, every sparsity zeroes the k = round(s·n)
    smallest magnitudes — the masks `global_unstructured` computes — found by one k-th value
    selection per sparsity over the magnitudes: no full sort, no int64 ranking (2× the
    parameter bytes) held in the scorer's memory (bench/scaling.py). Ties at the threshold are
    broken so that exactly k weights are zeroed."""
    sparsities = [float(s) for s in sparsities]
    if method != "l1_unstructured":
        return {s: pruned_copy(model, s, method) for s in sparsities}
    for s in sparsities:
        if not 0.0 < s < 1.0:
            raise ValueError(f"sparsity {s}: expected a value in (0, 1)")
    with torch.no_grad():
        magnitudes = torch.cat([getattr(m, n).detach().flatten().abs()
                                for m, n in prunable_parameters(model)])
        n_weights = magnitudes.numel()
        out = {}
        for s in sparsities:
            k = round(s * n_weights)
            keep = torch.ones_like(magnitudes, dtype=torch.bool)
            if k > 0:
                threshold = torch.kthvalue(magnitudes, k).values
                keep = magnitudes > threshold
                surplus = int(n_weights - keep.sum()) - k     # weights tied at the threshold
                if surplus > 0:
                    ties = (magnitudes == threshold).nonzero().flatten()
                    keep[ties[-surplus:]] = True
            clone = copy.deepcopy(model)
            offset = 0
            for module, name in prunable_parameters(clone):
                w = getattr(module, name)
                w.mul_(keep[offset:offset + w.numel()].view_as(w))
                offset += w.numel()
            out[s] = clone.eval()
    return out
