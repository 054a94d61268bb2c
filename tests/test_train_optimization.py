"""Every name train.optimizer and train.scheduler accept builds what it says."""

import pytest
import torch

from htl_ray.config import from_dict
from htl_ray.train.optimization import OPTIMIZERS, SCHEDULERS, make_optimizer, make_scheduler


@pytest.mark.parametrize("name, kind", [("adamw", torch.optim.AdamW), ("adam", torch.optim.Adam),
                                        ("sgd", torch.optim.SGD)])
def test_each_optimizer_gets_the_configured_rate_and_decay(name, kind):
    assert set(OPTIMIZERS) == {"adamw", "adam", "sgd"}
    train = from_dict({"train": {"optimizer": name, "lr": 0.05, "weight_decay": 0.01}}).train
    opt = make_optimizer(train, torch.nn.Linear(2, 1).parameters())
    assert type(opt) is kind
    assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["weight_decay"] == 0.01


def test_cosine_anneals_to_zero_over_the_epochs_and_none_keeps_the_rate():
    assert set(SCHEDULERS) == {"cosine", "none"}
    train = from_dict({"train": {"epochs": 4, "lr": 1.0}}).train
    opt = make_optimizer(train, torch.nn.Linear(2, 1).parameters())
    schedule = make_scheduler(train, opt)
    rates = []
    for _ in range(4):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    assert rates[0] == 1.0 and rates == sorted(rates, reverse=True)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    flat = from_dict({"train": {"scheduler": "none"}}).train
    assert make_scheduler(flat, opt) is None
