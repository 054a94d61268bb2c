"""The two collectives a training worker needs, a no-op when it trains alone: rank 0's value on
every rank, and every rank's value on every rank (torch.distributed object collectives)."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def broadcast(obj: Any) -> Any:
    """Rank 0's value on every rank."""
    if _distributed():
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]
    return obj


def gather(obj: Any) -> list[Any]:
    """Every rank's value, in rank order, on every rank."""
    if _distributed():
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out
    return [obj]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
