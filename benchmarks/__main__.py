"""``python -m benchmarks`` — see :mod:`benchmarks` and ``--help``."""

from benchmarks.cli import main

raise SystemExit(main())
