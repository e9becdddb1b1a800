"""Process-environment settings shared by the command line and the benchmarks."""

from __future__ import annotations

import os

#: XLA's CPU client on one thread; JAX reads ``XLA_FLAGS`` once, when it starts
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def xla_one_thread() -> str:
    """Add :data:`XLA_ONE_THREAD` to ``XLA_FLAGS`` (once; worker processes inherit it) and
    return the flags. Call it before anything imports JAX."""
    flags = os.environ.get("XLA_FLAGS", "")
    if XLA_ONE_THREAD not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {XLA_ONE_THREAD}".strip()
    return os.environ["XLA_FLAGS"]
