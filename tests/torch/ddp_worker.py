"""Helper process for tests/torch/test_ddp.py: one rank of a 2-process gloo group.

``python ddp_worker.py RANK WORLD PORT OUT CASE[,CASE...]`` runs every case on this rank's
half of the batch and rank 0 saves ``{case: {"grads": ..., "error": ..., ...}}`` to OUT.
A case is ``kind-wrap``:

- kind ``plain`` (``D(x)``), ``cond`` (``D(x, labels, scale=...)`` through ``args=`` and
  ``kwargs=``), ``dict`` (a dict output through ``output=``), ``scores`` (the penalty-only
  step through ``from_scores``), ``inf`` (one score is +Inf: the zero term stays 0), ``max``
  (max-GP over the global batch: the per-sample penalties gathered from every rank);
- wrap ``ddp`` (``DDP(m)``), ``compileddp`` (``torch.compile(DDP(m))``), ``ddpcompile``
  (``DDP(torch.compile(m))``), ``closure`` (``lambda x: DDP(m)(x)``: gpreg cannot see it),
  ``fsdp`` (``fully_shard(m)``, FSDP2), ``fsdplayers`` (``fully_shard`` on every Linear,
  then on ``m``), ``fsdpclosure`` (``fully_shard(m)`` behind a closure).

The test process computes the same steps on one process (:func:`steps` on the unwrapped
critic and the whole batch) and compares.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import gpreg_torch as gp

B = 8


class Cond(nn.Module):
    """A projection-conditional critic ``D(x, y, scale=1.0)`` with integer labels."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
        self.head = nn.Linear(16, 1)
        self.embed = nn.Embedding(3, 16)

    def forward(self, x, y, scale=1.0):
        h = self.body(x)
        return scale * (self.head(h).squeeze(1) + (self.embed(y) * h).sum(dim=1))


class Heads(nn.Module):
    """StudioGAN-style: a dict with the adversarial score and an auxiliary head."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.Tanh())
        self.adv = nn.Linear(16, 1)
        self.aux = nn.Linear(16, 3)

    def forward(self, x):
        h = self.body(x)
        return {"adv": self.adv(h), "aux": self.aux(h)}


class InfScore(nn.Module):
    """Scores with +Inf for sample 0 (a constant: the input gradient stays finite)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
        self.register_buffer("offset", torch.zeros(B, 1, dtype=torch.float64))
        self.offset[0] = float("inf")

    def forward(self, x):
        return self.net(x) + self.offset[: x.shape[0]]


def critic_and_data(kind: str = "plain"):
    torch.manual_seed(0)
    if kind == "cond":
        critic = Cond()
    elif kind == "dict":
        critic = Heads()
    elif kind == "inf":
        critic = InfScore()
    else:
        critic = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 1))
    critic = critic.double()
    g = torch.Generator().manual_seed(1)
    real = torch.randn(B, 6, generator=g, dtype=torch.float64)
    fake = torch.randn(B, 6, generator=g, dtype=torch.float64)
    alpha = torch.rand(B, generator=g, dtype=torch.float64)
    labels = torch.arange(B) % 3
    return critic, real, fake, alpha, labels


def steps(kind, critic, params, real, fake, alpha, labels):
    """A full WGAN-GP critic step, then a penalty-only (lazy R1) step: the gradients of each
    (None as zeros: an untouched parameter and a zero one update Adam differently, so the
    test also checks which is which)."""
    opts = {}
    if kind == "cond":
        opts = {"args": (labels,), "kwargs": {"scale": 0.7}}
    elif kind == "dict":
        opts = {"output": "adv"}

    def scores(x):
        if kind == "cond":
            return critic(x, labels, scale=0.7)
        if kind == "dict":
            return critic(x)["adv"]
        return critic(x)

    out = []
    if kind == "inf":  # the adversarial terms would be Inf: the penalty alone
        loss = gp.wgan_gp(critic, real, fake, alpha=alpha)
    elif kind == "max":
        loss = scores(fake).mean() - scores(real).mean() + global_max_gp(critic, real, fake,
                                                                          alpha)
    else:
        loss = scores(fake).mean() - scores(real).mean() + gp.wgan_gp(
            critic, real, fake, alpha=alpha, **opts)
    loss.backward()
    out.append([p.grad.clone() for p in params])
    for p in params:
        p.grad = None
    if kind == "scores":  # forward reuse: R1 from the scores of this step's own forward
        x = real.detach().requires_grad_()
        fsdp = hasattr(critic, "set_reshard_after_backward")
        if fsdp:  # what gpreg does for a critic it runs itself (docs/at-scale.md, FSDP)
            critic.set_reshard_after_backward(False)
        reg = 16 * gp.from_scores("r1", critic(x), x)
        if fsdp:
            critic.set_reshard_after_backward(True)
        reg.backward()
    elif kind == "max":
        (16 * global_max_gp(critic, real, fake, alpha)).backward()
    else:
        (16 * gp.r1(critic, real, **opts)).backward()
    out.append([torch.full_like(p, float("nan")) if p.grad is None else p.grad.clone()
                for p in params])
    for p in params:
        p.grad = None
    return out, float(loss.detach())


def global_max_gp(critic, real, fake, alpha):
    """Max-GP over the whole batch (docs/at-scale.md): each rank's per-sample penalties,
    gathered differentiably, then the largest; on one process, plain max_gp."""
    if not (dist.is_available() and dist.is_initialized()):
        return gp.max_gp(critic, real, fake, alpha=alpha)
    import torch.distributed.nn.functional as dist_nn

    per_sample = gp.max_gp(critic, real, fake, alpha=alpha, reduction="none")
    return torch.cat(dist_nn.all_gather(per_sample)).max()


def wrap(kind_wrap: str, critic):
    how = kind_wrap.split("-")[1]
    if how in ("fsdp", "fsdplayers"):
        from torch.distributed.fsdp import fully_shard

        if how == "fsdplayers":  # every Linear its own FSDP unit, then the root
            for m in critic.modules():
                if isinstance(m, nn.Linear):
                    fully_shard(m)
        fully_shard(critic)
        return critic, critic
    if how == "fsdpclosure":  # gpreg cannot see the FSDP module
        from torch.distributed.fsdp import fully_shard

        fully_shard(critic)
        return _closure(critic), critic
    if how == "ddpcompile":
        model = DDP(torch.compile(critic, backend="aot_eager"))
    elif how == "compileddp":
        model = torch.compile(DDP(critic), backend="aot_eager")
    else:
        model = DDP(critic)
    if how == "closure":  # gpreg cannot see the DDP module: no unused-parameter handling
        return _closure(model), model
    return model, model


def _closure(module):
    def call(*a, **k):
        return module(*a, **k)
    return call


def run_case(case: str, rank: int, world: int) -> dict:
    kind = case.split("-")[0]
    critic, real, fake, alpha, labels = critic_and_data(kind)
    part = slice(rank * B // world, (rank + 1) * B // world)
    call, model = wrap(case, critic)
    params = list(critic.parameters())
    result: dict = {"error": "", "grads": None}
    try:
        result["grads"], result["loss"] = steps(kind, call, params, real[part], fake[part],
                                                alpha[part], labels[part])
        if "fsdp" in case:  # sharded parameters: gather the full gradients for comparison
            result["grads"] = [[_full(g) for g in gs] for gs in result["grads"]]
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        return result
    try:  # one more iteration: DDP notices a reduction left unfinished by the previous one
        x = real[part]
        out = model(x, labels[part]) if kind == "cond" else model(x)
        out = out["adv"] if kind == "dict" else out
        out.mean().backward()
    except RuntimeError as exc:
        result["error"] = str(exc)
    if kind == "plain" and case.endswith("-ddp"):  # an evaluation-only value is a plain value
        value = gp.r1(call, real[part], create_graph=False)
        try:
            result["eval"] = (value.requires_grad, float(value.numpy()))
        except RuntimeError as exc:
            result["eval"] = (value.requires_grad, str(exc))
    return result


def _full(t):
    full = getattr(t, "full_tensor", None)
    return full() if full is not None else t


def main(rank: int, world: int, port: str, path: str, cases: str) -> None:
    warnings.filterwarnings("ignore", message=".*all_gather is deprecated")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {case: run_case(case, rank, world) for case in cases.split(",")}
    if rank == 0:
        torch.save(results, path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
    # past a clean shutdown of the process group: leave without the interpreter's teardown,
    # where gloo's threads were seen to abort a finished worker ("terminate called without
    # an active exception", exit -6) once in a few dozen runs
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
