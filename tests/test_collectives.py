"""Alone (no process group), the collectives hand back this rank's own value."""

from htl_ray.collectives import barrier, broadcast, gather


def test_collectives_of_a_single_rank():
    value = {"version": 3}
    assert broadcast(value) is value
    assert gather(value) == [value]
    barrier()                                        # returns at once
