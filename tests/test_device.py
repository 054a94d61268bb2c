"""Placement rules, and that bf16 autocast / channels-last change precision, not results."""

from __future__ import annotations

import pytest
import torch

from htl_ray.config import ModelConfig
from htl_ray.device import best_device, placement
from htl_ray.models import create_model

TINY = ModelConfig(decoder_channels=[32, 16, 8, 8, 4])


def test_cpu_defaults_to_plain_fp32_and_gpu_to_bf16_channels_last():
    cpu = placement("cpu")
    assert cpu.amp_dtype is None and not cpu.channels_last
    assert cpu.describe() == "cpu fp32"
    cuda = placement("cuda:0", precision="bf16", memory_format="auto")
    assert cuda.amp_dtype is torch.bfloat16 and cuda.channels_last
    assert cuda.describe() == "cuda:0 bfloat16 autocast, channels-last"
    assert placement("cuda", precision="fp32", memory_format="contiguous").amp_dtype is None
    with pytest.raises(ValueError, match="precision: expected one of"):
        placement("cpu", precision="fp16")


def test_no_gpu_share_or_no_visible_gpu_means_cpu():
    assert best_device(0.0) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert best_device(0.25).type == expected


def test_bf16_and_channels_last_keep_fp32_outputs_close_to_the_fp32_model():
    torch.manual_seed(0)
    ref = create_model(TINY).eval()
    fast = create_model(TINY).eval()
    fast.load_state_dict(ref.state_dict())
    place = placement("cpu", precision="bf16", memory_format="channels_last")
    fast = place.prepare(fast)
    assert fast.encoder.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        want = ref(x)
        with place.autocast():
            got = fast(place.inputs(x))
    assert got.dtype == torch.float32                 # losses never see bf16
    # bf16 keeps ~3 significant digits: masks agree almost everywhere
    agree = ((torch.sigmoid(got) > 0.5) == (torch.sigmoid(want) > 0.5)).float().mean()
    assert agree > 0.98
    assert not torch.equal(got, want)                 # it did run in reduced precision
    # the state dict is untouched by the forward hook: checkpoints load into a plain model
    assert set(fast.state_dict()) == set(ref.state_dict())
