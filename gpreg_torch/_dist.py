"""DistributedDataParallel: the batch statistics of max_gp and DRAGAN over every rank.

A DDP critic sees one rank's share of the batch, and DDP averages the ranks' gradients. The
mean penalties need nothing (the average of equal-sized local means is the global mean); the
maximum of max_gp and DRAGAN's σ are statistics of the whole batch, taken here with
all-reduces so that a DDP step equals the one-process step on the global batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from gpreg_torch import _ops


def active() -> bool:
    """Whether a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class GlobalStatistics:
    """``gpreg_torch._ops`` whose ``std`` is taken over the samples of every rank."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_ops, name)

    @staticmethod
    def std(x: torch.Tensor, ddof: int = 0) -> torch.Tensor:
        x = x.detach()
        stats = torch.stack([x.sum(), torch.full((), x.numel(), dtype=x.dtype,
                                                 device=x.device)])
        dist.all_reduce(stats)
        mean = stats[0] / stats[1]
        squares = ((x - mean) ** 2).sum()
        dist.all_reduce(squares)
        return torch.sqrt(squares / (stats[1] - ddof))


def global_max(per_sample: torch.Tensor) -> torch.Tensor:
    """The maximum over every rank's samples, on every rank; the rank that holds it (the
    first one, on a tie) carries its gradient times the world size, the others none, so that
    DDP's average is the one-process gradient. No host sync."""
    local = per_sample.max()
    world, rank = dist.get_world_size(), dist.get_rank()
    gathered = torch.zeros(world, dtype=local.dtype, device=local.device)
    gathered[rank] = local.detach()
    dist.all_reduce(gathered)
    owner = (torch.argmax(gathered) == rank).to(local.dtype)
    return gathered.max() + owner * world * (local - local.detach())
