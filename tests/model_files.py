"""Real model files for the tests of what reads them (a helper, not a test module): a small
U-Net (resnet18 encoder, random weights, a narrow decoder) saved as `htl-ray train` saves it —
checkpoint directories (checkpoint.pt + meta.json) inside a run directory (htl_run.json)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from htl_ray.checkpoints import save_checkpoint
from htl_ray.config import ModelConfig
from htl_ray.models import create_model
from htl_ray.run_dir import RunDir, RunState

SMALL_DECODER = [16, 8, 8, 4, 4]


def small_model_config(**changes) -> dict[str, Any]:
    """The model config of the small U-Net, as meta.json records it."""
    return dataclasses.asdict(ModelConfig(**{"decoder_channels": list(SMALL_DECODER),
                                             **changes}))


def small_model(seed: int = 0, **changes) -> torch.nn.Module:
    """The small U-Net with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return create_model(ModelConfig(**small_model_config(**changes))).eval()


def write_checkpoint(directory: Path, model: torch.nn.Module, *, epoch: int,
                     metrics: dict[str, float] | None = None,
                     input_size: tuple[int, int] | None = (32, 32),
                     model_config: dict[str, Any] | None = None) -> Path:
    """A checkpoint directory as the training loop writes it; `model_config` None: the small
    U-Net's; `input_size` None: not recorded (as runs before it was)."""
    extra: dict[str, Any] = {"model_config": model_config or small_model_config()}
    if input_size is not None:
        extra["input_size"] = list(input_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(directory, model, optimizer, None, epoch=epoch,
                    metrics={"epoch": epoch, **(metrics or {})}, extra=extra)
    return Path(directory)


def write_run_state(run_dir: Path, **fields) -> Path:
    """`run_dir/htl_run.json` holding `fields` (RunState's)."""
    RunDir(run_dir).write_state(RunState(**fields))
    return Path(run_dir)
