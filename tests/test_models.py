import pytest
import torch

from htl_ray.config import ModelConfig
from htl_ray.models import create_model, state_checksum


@pytest.mark.parametrize("arch", ["unet", "fpn", "deeplabv3plus"])
def test_factory_builds_single_logit_models(arch):
    model = create_model(ModelConfig(arch=arch, encoder="resnet18"))
    out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 1, 64, 64)


def test_decoder_channels_and_checksum():
    small = create_model(ModelConfig(decoder_channels=[32, 16, 8, 8, 4]))
    big = create_model(ModelConfig())
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in big.parameters())
    torch.manual_seed(0)
    a = create_model(ModelConfig(decoder_channels=[32, 16, 8, 8, 4]))
    torch.manual_seed(0)
    b = create_model(ModelConfig(decoder_channels=[32, 16, 8, 8, 4]))
    assert state_checksum(a) == state_checksum(b)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="model.arch='nonet'"):
        create_model(ModelConfig(arch="nonet"))
