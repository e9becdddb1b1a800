"""DistributedDataParallel beyond the mean penalties: max_gp's maximum and DRAGAN's σ are
taken over both ranks, so 2 gloo processes equal one process on the whole batch. Expected
numbers: the hand-written float64 reference (tests/support/gp_reference.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "support"))
import ddp_statistics_worker as worker  # noqa: E402
from gp_reference import penalty  # noqa: E402


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


@pytest.fixture(scope="module")
def ddp_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "statistics.pt"
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(HERE / "ddp_statistics_worker.py"), str(r),
                               "2", port, str(out)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    return torch.load(out)


@pytest.mark.parametrize("name", ["max_gp", "dragan", "dragan_ddof1"])
def test_ddp_max_gp_and_dragan_equal_one_process(ddp_result, name):
    """Issue 14.7 (DDP): each rank used its own maximum (DDP then averaged the two) and its
    own σ; now the statistics are global and the DDP gradients are the one-process ones."""
    critic, real, fake, alpha, noise = worker.critic_and_data()
    leaves = [p.detach().clone().requires_grad_(True) for p in critic.parameters()]

    def twin(x):
        return torch.tanh(x @ leaves[0].T + leaves[1]) @ leaves[2].T + leaves[3]

    ref_value, ref_grads, _ = penalty(name.removesuffix("_ddof1"), twin, leaves, [real], [fake],
                                      alpha=alpha, noise=[noise], ddof=int(name.endswith("1")))
    value, grads = ddp_result[name]
    np.testing.assert_allclose(value, ref_value, rtol=1e-9)
    top = max(float(np.max(np.abs(g))) for g in ref_grads)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g.numpy(), r, rtol=1e-9, atol=1e-12 * top)
