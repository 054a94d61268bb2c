"""Where a model runs and in what precision: one rule for trainers and scorer actors.

On a CUDA device the defaults are bf16 autocast (tensor cores; no loss scaling needed, unlike
fp16) and channels-last memory (what cuDNN's fastest convolutions want). On CPU both default
off: CPU autocast is slower than fp32 on most CPUs, and channels-last gains little there. So
`use_gpu: false` — or a node without a GPU — falls back to plain fp32 without any change to
the config. Model outputs are cast back to fp32, so losses and metrics never run in bf16.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


@dataclass(frozen=True)
class Placement:
    device: torch.device
    amp_dtype: torch.dtype | None       # None: fp32 throughout
    channels_last: bool

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move `model` here, in this memory format; under autocast its outputs come back as
        fp32 (a forward hook, so the state dict and checkpoints are unchanged)."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.amp_dtype is not None:
            model.register_forward_hook(_outputs_to_fp32)
        return model

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last \
            else images

    def describe(self) -> str:
        precision = "fp32" if self.amp_dtype is None else f"{self.amp_dtype}".replace(
            "torch.", "") + " autocast"
        return f"{self.device} {precision}{', channels-last' if self.channels_last else ''}"


def _outputs_to_fp32(module, args, output):
    return output.float() if torch.is_tensor(output) and output.is_floating_point() else output


def placement(device: torch.device | str, precision: str = "auto",
              memory_format: str = "auto") -> Placement:
    """The placement for `device` under the config's `train.precision` / `train.memory_format`."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"memory_format: expected one of {MEMORY_FORMATS}, got {memory_format!r}")
    cuda = device.type == "cuda"
    if precision == "auto":
        bf16 = cuda and torch.cuda.is_bf16_supported()
    else:
        bf16 = precision == "bf16"
    channels_last = cuda if memory_format == "auto" else memory_format == "channels_last"
    return Placement(device=device, amp_dtype=torch.bfloat16 if bf16 else None,
                     channels_last=channels_last)


def best_device(gpus: float) -> torch.device:
    """CUDA when this process was given (a share of) a GPU and one is visible, else CPU."""
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")
