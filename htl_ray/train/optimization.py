"""Optimisers and learning-rate schedules by name: the registries that `train.optimizer` and
`train.scheduler` accept (config.RegistryNames reads their keys)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from htl_ray.config import TrainConfig

Parameters = Iterable[torch.nn.Parameter]

OPTIMIZERS: dict[str, Callable[[Parameters, TrainConfig], torch.optim.Optimizer]] = {
    "adamw": lambda params, t: torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay),
    "adam": lambda params, t: torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay),
    "sgd": lambda params, t: torch.optim.SGD(params, lr=t.lr, momentum=0.9,
                                             weight_decay=t.weight_decay),
}

# None: a constant learning rate
SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer, TrainConfig], Any]] = {
    "cosine": lambda opt, t: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t.epochs),
    "none": lambda opt, t: None,
}


def make_optimizer(train: TrainConfig, params: Parameters) -> torch.optim.Optimizer:
    return OPTIMIZERS[train.optimizer](params, train)


def make_scheduler(train: TrainConfig, optimizer: torch.optim.Optimizer) -> Any:
    """The schedule, stepped once per epoch; None for a constant rate."""
    return SCHEDULERS[train.scheduler](optimizer, train)
