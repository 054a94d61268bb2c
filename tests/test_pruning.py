import pytest
import torch

from htl_ray.config import ModelConfig
from htl_ray.models import create_model, state_checksum
from htl_ray.pruning import measured_sparsity, prunable_parameters, pruned_copy


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model(ModelConfig(decoder_channels=[32, 16, 8, 8, 4])).eval()


@pytest.mark.parametrize("s", [0.3, 0.5, 0.7, 0.9])
def test_global_l1_reaches_the_exact_sparsity_and_leaves_the_dense_model(model, s):
    before = state_checksum(model)
    pruned = pruned_copy(model, s)
    total = sum(getattr(m, n).numel() for m, n in prunable_parameters(pruned))
    assert abs(measured_sparsity(pruned) - s) <= 1 / total + 1e-12      # well within ±0.5%
    assert state_checksum(model) == before                              # dense untouched
    assert measured_sparsity(model) < 0.01
    # global magnitude: every surviving weight is at least as large as every pruned one
    dense_w = torch.cat([getattr(m, n).detach().flatten().abs()
                         for m, n in prunable_parameters(model)])
    pruned_w = torch.cat([getattr(m, n).detach().flatten() for m, n in prunable_parameters(pruned)])
    assert dense_w[pruned_w == 0].max() <= dense_w[pruned_w != 0].min()
    assert not any(hasattr(m, "weight_mask") for m, _ in prunable_parameters(pruned))


def test_structured_channel_pruning_zeroes_whole_channels(model):
    pruned = pruned_copy(model, 0.5, method="channel_l2")
    assert abs(measured_sparsity(pruned) - 0.5) < 0.05
    conv = next(m for m, _ in prunable_parameters(pruned) if m.weight.shape[0] >= 16)
    per_channel = conv.weight.detach().flatten(1).abs().sum(1)
    assert (per_channel == 0).float().mean() == pytest.approx(0.5, abs=0.07)


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="sparsity 1.0"):
        pruned_copy(model, 1.0)
    with pytest.raises(ValueError, match="pruning method"):
        pruned_copy(model, 0.5, method="random")


def test_shared_ranking_gives_the_masks_of_torch_global_unstructured(model):
    from htl_ray.pruning import pruned_copies

    fast = pruned_copies(model, (0.3, 0.7))
    for s, copy in fast.items():
        reference = pruned_copy(model, s)                  # torch.nn.utils.prune path
        for (a, _), (b, _) in zip(prunable_parameters(copy), prunable_parameters(reference),
                                  strict=True):
            assert torch.equal(a.weight == 0, b.weight == 0)
            assert torch.equal(a.weight, b.weight)
    with pytest.raises(ValueError, match="sparsity 1.5"):
        pruned_copies(model, (0.5, 1.5))


def test_ties_at_the_threshold_still_zero_exactly_k_weights():
    from htl_ray.pruning import pruned_copies

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Linear(10, 10))
    with torch.no_grad():
        net[0].weight.fill_(0.5)                   # 36 weights of one magnitude
        net[1].weight.copy_(torch.arange(100, dtype=torch.float32).view(10, 10) / 100 + 1)
    for s, k in ((0.2, 27), (0.5, 68)):            # k = round(s · 136) lands inside the ties
        pruned = pruned_copies(net, (s,))[s]
        zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in prunable_parameters(pruned))
        assert zeros == k
        assert torch.all(pruned[1].weight[pruned[1].weight != 0] >= 1.0)  # larger ones survive
