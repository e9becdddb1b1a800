"""Process-environment settings shared by the command line and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

#: XLA's CPU client on one thread; JAX reads ``XLA_FLAGS`` once, when it starts
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def xla_one_thread() -> str:
    """Add :data:`XLA_ONE_THREAD` to ``XLA_FLAGS`` (once; worker processes inherit it) and
    return the flags. Call it before anything imports JAX."""
    flags = os.environ.get("XLA_FLAGS", "")
    if XLA_ONE_THREAD not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {XLA_ONE_THREAD}".strip()
    return os.environ["XLA_FLAGS"]


def _import_path() -> list[str]:
    """This process's ``sys.path``, led by the folder that holds the running gpreg when the
    name ``gpreg`` resolves to a namespace package (a folder named ``gpreg`` without an
    ``__init__.py``, such as a clone, ahead of an editable install on the path)."""
    import gpreg

    path = list(sys.path)
    if getattr(gpreg, "__file__", None) is None:
        path.insert(0, str(Path(__file__).resolve().parents[2]))  # above gpreg/tools/
    return path


def python_module_command(module: str, *args: str) -> list[str]:
    """The command that runs ``python -m module args`` in a new interpreter which imports the
    gpreg this process runs, whatever folder it starts in.

    ``python -m`` puts the current folder first on ``sys.path``: started from a folder that
    holds a directory named ``gpreg`` (the folder a clone sits in, say), the worker would
    import that directory instead (as an empty namespace package, or a package of the same
    name) and fail with ``ImportError: cannot import name ...``. The command passes this
    process's ``sys.path`` (:func:`_import_path`) to the new interpreter instead."""
    boot = (f"import runpy, sys; sys.path[:] = {_import_path()!r}; "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", boot, *args]


# --- TensorFlow's C++ log lines --------------------------------------------------------------
#: an absl/glog line: severity letter, date, time, thread, file:line]
_ABSL_LINE = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^\s:]+:\d+\] ")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called"


def hidden_tensorflow_line(line: str, level: int) -> bool:
    """Whether ``TF_CPP_MIN_LOG_LEVEL=level`` (0 all, 1 no INFO, 2 no WARNING, 3 no ERROR)
    hides ``line``, were TensorFlow to apply it to every line it prints: it does not to those
    it prints before its logging starts (an oneDNN notice, "Could not find cuda drivers", and
    the ``failed call to cuInit`` error of its GPU build on a machine without one). FATAL
    lines are never hidden."""
    if line.startswith(_ABSL_PREAMBLE):
        return level >= 1
    m = _ABSL_LINE.match(line)
    return bool(m) and "IWEF".index(m.group(1)) < min(level, 3)


@contextlib.contextmanager
def tensorflow_logs_filtered() -> Iterator[None]:
    """Within the block, lines that :func:`hidden_tensorflow_line` hides do not reach the
    standard error of this process and of the processes it starts (``gpreg demo``'s workers
    import TensorFlow through Keras); every other line does. The level is
    ``TF_CPP_MIN_LOG_LEVEL``, 3 when unset (as for ``gpreg compare``'s workers, whose output
    is captured); 0 leaves the standard error alone.

    File descriptor 2 points at a pipe that a thread copies to the real standard error,
    line by line; ``sys.stderr`` writes there directly (so a progress line redrawn in place,
    without a newline, is not held back). The thread outlives the block as a daemon, for a
    process that keeps the pipe (multiprocessing's resource tracker); the block's exit waits
    until everything written before it has been copied."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    except ValueError:
        level = 0  # TensorFlow's own reading of a bad value: show everything
    if level <= 0:
        yield
        return
    sys.stderr.flush()
    real_fd = os.dup(2)
    real = open(real_fd, "w", encoding=sys.stderr.encoding, errors="backslashreplace",  # noqa: SIM115
                buffering=1, closefd=False)
    read_fd, write_fd = os.pipe()
    mark = f"\0gpreg-{os.getpid()}-{id(real)}\n".encode()
    caught_up = threading.Event()

    def copy() -> None:
        with open(read_fd, "rb") as src, open(real_fd, "wb", buffering=0, closefd=False) as dst:
            for raw in src:
                if raw.endswith(mark):  # after a child's unfinished line, if any
                    dst.write(raw[:-len(mark)])
                    caught_up.set()
                elif not hidden_tensorflow_line(raw.decode(errors="replace"), level):
                    dst.write(raw)

    threading.Thread(target=copy, name="gpreg-stderr-filter", daemon=True).start()
    saved_stderr = sys.stderr
    os.dup2(write_fd, 2)
    sys.stderr = real
    try:
        yield
    finally:
        sys.stderr = saved_stderr
        real.flush()
        os.dup2(real_fd, 2)  # fd 2 is the real standard error again
        os.write(write_fd, mark)  # after everything this process and its children wrote
        os.close(write_fd)
        caught_up.wait(timeout=10)
        real.close()
