"""gpreg's tooling, apart from the core: the command line (``gpreg compare``, ``gpreg demo``,
``gpreg cost``, in :mod:`gpreg.tools.cli`), the compare worker, the demo, what a penalty costs
on a critic (``gpreg cost`` and the adapters' ``cost``), the paired-timing harness it shares
with ``python -m benchmarks``, the built-in critics, and the FLOP count of an XLA program.

Framework-free at import: the PyTorch and Keras halves live in ``gpreg_torch._cost`` and
``gpreg_keras._cost``, and the critic builders import their framework themselves.
"""
