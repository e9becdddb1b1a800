"""Helper process for tests/torch/test_ddp_statistics.py: one rank of a 2-process gloo group
computing max_gp and DRAGAN through a DDP critic on its half of the batch."""

from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import gpreg_torch as gp


def critic_and_data():
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    g = torch.Generator().manual_seed(7)
    scale = torch.where(torch.arange(8) < 4, 1.0, 3.0).double()[:, None]  # shards differ
    real = torch.randn(8, 5, generator=g, dtype=torch.float64) * scale
    fake = torch.randn(8, 5, generator=g, dtype=torch.float64)
    alpha = torch.rand(8, generator=g, dtype=torch.float64)
    noise = torch.rand(8, 5, generator=g, dtype=torch.float64)
    return critic, real, fake, alpha, noise


def penalties(critic, real, fake, alpha, noise):
    return {"max_gp": lambda: gp.max_gp(critic, real, fake, alpha=alpha),
            "dragan": lambda: gp.dragan(critic, real, alpha=alpha, noise=noise),
            "dragan_ddof1": lambda: gp.dragan(critic, real, alpha=alpha, noise=noise, ddof=1)}


def main(rank: int, world: int, port: str, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    critic, real, fake, alpha, noise = critic_and_data()
    part = slice(rank * 8 // world, (rank + 1) * 8 // world)
    model = DDP(critic)
    out = {}
    for name, fn in penalties(model, real[part], fake[part], alpha[part], noise[part]).items():
        for p in critic.parameters():
            p.grad = None
        value = fn()
        value.backward()
        mean = value.detach().clone()  # the ranks' values, averaged as DDP averages gradients
        dist.all_reduce(mean)
        out[name] = (float(mean) / world, [p.grad.clone() for p in critic.parameters()])
    if rank == 0:
        torch.save(out, path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
    # past a clean shutdown of the process group: leave without the interpreter's teardown,
    # where gloo's threads were seen to abort a finished worker ("terminate called without
    # an active exception", exit -6) once in a few dozen runs
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
