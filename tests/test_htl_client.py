"""A training rank's HTL client: when it attends, when it hands the coordinator a snapshot,
and the weight it gives each sample of a batch. (Adopting versions from a live coordinator,
across ranks and restarts, is tested by test_htl_training.)"""

import numpy as np
import pytest

from htl_ray.config import HtlConfig
from htl_ray.htl.client import HtlClient


def _client(coordinator="a coordinator", *, version=0, **htl) -> HtlClient:
    return HtlClient(coordinator, htl=HtlConfig(**htl), epochs=6, version=version)


@pytest.mark.parametrize("refresh_every, after", [(2, [1, 3]), (1, [0, 1, 2, 3, 4]), (6, [])])
def test_a_snapshot_is_handed_over_every_r_epochs_but_never_after_the_last(refresh_every,
                                                                          after):
    client = _client(refresh_every=refresh_every)
    assert [e for e in range(6) if client.refreshes_after(e)] == after
    assert not any(_client(None, refresh_every=refresh_every).refreshes_after(e)
                   for e in range(6))                      # no coordinator: no HTL refresh


def test_attention_starts_after_the_warmup_once_a_version_exists():
    client = _client(warmup_epochs=2)
    assert not any(client.attends(e) for e in range(6))     # version 0: nothing to attend
    client.version = 1
    assert [client.attends(e) for e in range(4)] == [False, False, True, True]
    assert not _client(None, version=1).attends(3)


def test_without_a_coordinator_adopting_costs_nothing():
    client = _client(None)
    assert client.adopt(rank=0) == 0.0 and client.version == 0


def test_batch_weights_default_to_one_for_samples_the_version_does_not_list():
    client = _client(version=3)
    assert client.resumed_version == 3                       # a resumed run keeps its version
    client.weights = {"a": 2.0, "b": 0.5}
    assert client.batch_weights(np.array(["b", "z", "a"])).tolist() == [0.5, 1.0, 2.0]
    assert _client().resumed_version is None
