"""gpreg's benchmarks: what a gradient penalty costs, measured on equal terms.

Run ``python -m benchmarks`` (``--help`` for options; ``--quick`` checks the harness in
seconds). Results go to ``benchmarks/results/<host-kind>.json`` (``--out``) with a
description of the machine, and to Markdown tables with ``--markdown FILE``.

Method
------
*Same work, same conditions.* Every comparison is a *group* of variants that run on the
same critic instance, the same batch, the same device and the same thread count
(``torch.set_num_threads`` is set explicitly and recorded; the Keras workers set
TensorFlow's intra/inter-op threads or XLA's flags likewise). A hand-written baseline and
gpreg receive the same explicit interpolation weights α, and before anything is timed the
harness checks that they give the same penalty value and the same parameter gradients to
float32 tolerance: a faster wrong baseline would make every ratio meaningless.

*The unit is what training pays.* A penalty unit is: build the points, run the critic
there, take the input gradient with its graph, form the penalty, and backpropagate it to
the critic's parameters. A step is a whole critic update (zero grads, WGAN loss with or
without the penalty, backward, Adam step).

*Warm-up.* Each variant runs ``warmup`` times untimed (lazy initialisation, optimizer
state, allocator caches, and for XLA the compilation, which is reported separately as the
first-call time).

*Paired and interleaved.* The group is timed in rounds. In every round each variant is
timed once, in an order shuffled per round (fixed seed); a sample repeats the unit enough
times (``inner``, calibrated per variant after warm-up) to last at least ``--min-sample-s``
and is divided by that count. A ratio between two variants is computed *within* each round,
and the report gives the median of these per-round ratios with their min and max.
Interleaving spreads slow drifts of the machine over all variants, pairing cancels most of
what remains, and the median ignores the rounds a background burst spoiled.

*Noise is measured, not assumed away.* Groups that compare gpreg with a baseline also time
a second copy of the baseline: its ratio to the baseline (*control*) shows the noise floor
of that row, and a difference smaller than the control's spread is not a difference. Each
group also records how many cores other processes kept busy while it ran (``bg``, from
/proc/stat); on a machine shared with other work, use ``--threads 1``.

*Counts beside times.* Step rows carry the matmul/convolution FLOP counts of both steps
(``torch.utils.flop_counter.FlopCounterMode``, which sees the double-backward kernels too),
so the time ratio can be read against the arithmetic ratio. Peak memory is the peak of
tensor memory allocated during one step above what existed before it: on CUDA from
``torch.cuda.max_memory_allocated``, on the CPU from the memory events of
``torch.profiler`` (``profile_memory=True``), which follow the CPU allocator.

*One Keras backend per process.* Keras reads ``KERAS_BACKEND`` once, so TensorFlow and JAX
each run in a subprocess (``benchmarks.keras_worker``); rows of different frameworks are
therefore not interleaved with each other, only within their own process.
"""
