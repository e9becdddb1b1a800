"""DistributedDataParallel: two gloo processes on loopback give the one-process gradients."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from gpreg._tolerances import assert_close

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ddp_worker  # noqa: E402


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def run_ranks(tmp_path, wrap):
    out = tmp_path / f"grads-{wrap}.pt"
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(HERE / "ddp_worker.py"), str(r), "2", port,
                               str(out), wrap], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    return [p.returncode for p in procs], logs, out


def test_ddp_gradients_equal_single_process_full_batch(tmp_path):
    codes, logs, out = run_ranks(tmp_path, "ddp")
    assert codes == [0, 0], "\n".join(logs)
    saved = torch.load(out)
    assert saved["error"] == ""
    ddp_grads = saved["grads"]
    critic, real, fake, alpha = ddp_worker.critic_and_data()
    ref = ddp_worker.steps(critic, list(critic.parameters()), real, fake, alpha)
    for step, (got, want) in enumerate(zip(ddp_grads, ref)):
        for g, w in zip(got, want):
            assert_close(g.numpy(), w.numpy(), "float64", err_msg=f"step {step}")
    # the last layer's bias takes no part in the penalty-only step: an exact zero, no error
    assert torch.count_nonzero(ddp_grads[1][-1]) == 0


def test_penalty_only_step_breaks_ddp_when_the_module_is_hidden(tmp_path):
    """The problem gpreg handles: behind a closure gpreg cannot see the DDP module, and the
    penalty-only step leaves the last bias without a gradient."""
    codes, logs, out = run_ranks(tmp_path, "closure")
    assert codes == [0, 0], "\n".join(logs)
    assert "Expected to have finished reduction in the prior iteration" in torch.load(out)["error"]
