"""Docstring templates shared by the adapters: the specification of each public function.

Each adapter fills ``<<example>>`` (a runnable example in its framework), ``<<rng_*>>``
(its source of randomness: ``generator=`` in PyTorch, ``seed=`` in Keras) and
``<<common>>`` (the calling convention), through :func:`render`.
"""

from __future__ import annotations

import re
import textwrap

COMMON = (
    "The critic is called as ``critic(*points, *args, **kwargs)``: the evaluation points (one\n"
    "    tensor, or the parts of a tuple as separate positional arguments; a Keras Functional\n"
    "    model with several inputs gets them as one list), then the conditioning in ``args`` and\n"
    "    ``kwargs``, passed through untouched. Its output (or the part of it that ``output``\n"
    "    picks) keeps the batch as leading dimension and is summed per sample. :math:`n_i` is\n"
    "    the Euclidean norm of the gradient of sample ``i``'s summed output with respect to all\n"
    "    of sample ``i``'s input elements. The points, ``args`` and ``kwargs`` are detached: no\n"
    "    gradient reaches ``real`` or ``fake`` (nor the generator behind them)."
)

CALL_ARGS = r"""        args: extra positional arguments for the critic after the points (labels, class
            embeddings, StyleGAN's ``c``): never differentiated nor interpolated; tensors in
            it need the batch as leading dimension (one row per evaluation point). Pass the
            critic module itself with ``args=`` rather than a closure: gpreg then sees the
            module (data parallelism, BatchNorm, compiled and recurrent critics).
        kwargs: extra keyword arguments for the critic (``{"training": True}`` in Keras).
        output: which part of a structured output is the score: an index, a key or
            attribute name, or a callable (``output="adv_output"``, ``output=0``,
            ``output=lambda o: o.logits``); ``None`` for a critic that returns the scores.
"""

TEMPLATES: dict[str, str] = {}

TEMPLATES["wgan_gp"] = r"""WGAN-GP: two-sided gradient penalty at random interpolates of real and fake.

    :math:`\lambda` is ``weight``, :math:`t` is ``target``, :math:`x` is ``real``,
    :math:`\tilde x` is ``fake``, :math:`\alpha` is ``alpha`` and :math:`D` is ``critic``:

    .. math::

        \hat x_i = \alpha_i x_i + (1 - \alpha_i)\,\tilde x_i, \qquad
        n_i = \lVert \nabla_{\hat x_i} D(\hat x_i) \rVert_2, \qquad
        \mathrm{GP} = \frac{\lambda}{B} \sum_{i=1}^{B} (n_i - t)^2 .

    With ``ratio=True`` the per-sample term is :math:`(n_i / t - 1)^2` (TF-GAN's and
    ProGAN's form, equal to :math:`(n_i - t)^2 / t^2`).
    <<common>>

    Args:
        critic: callable mapping the points to scores of shape ``(B,)`` or ``(B, ...)``.
        real: real batch (a tensor, or a tuple of tensors for a multi-input critic).
        fake: generated batch, same shape(s) as ``real``.
        weight: :math:`\lambda`, non-negative (default 10, as in the paper).
        target: :math:`t`, the gradient norm the penalty pulls towards (default 1).
        ratio: use the ratio form :math:`(n/t - 1)^2`.
        alpha: interpolation weights, shape ``(B,)`` (or ``(B, 1, ..., 1)``), or a number
            for all samples; ``None`` draws :math:`\alpha_i \sim U[0, 1)` per sample.
<<rng_alpha>><<call_args>>        reduction: ``"mean"`` (default), ``"sum"``, ``"max"`` or ``"none"`` (the scaled
            per-sample vector of shape ``(B,)``).
        create_graph: keep the graph of the input gradient so the penalty is differentiable
            with respect to the critic's parameters (double backprop). ``False`` is for
            evaluation only: a plain value (as under ``torch.no_grad()`` in PyTorch). In
            PyTorch, with a graph and the critic passed as a module, every parameter of the
            critic gets a gradient from the penalty, an exact zero where the penalty does not
            reach it (as StyleGAN2-ADA's ``logits * 0``), so that Adam and DDP see it.
<<scaler>>        global_batch_size: under data parallelism where gradients are *summed* over
            replicas (``tf.distribute``, Keras's optimizers), the batch size over all
            replicas: ``reduction="mean"`` then divides the local sum by it, so the summed
            gradient is that of the global mean. Leave ``None`` under PyTorch DDP, which
            averages.
        check_finite: raise ``FloatingPointError`` naming the samples whose points, critic
            output or input gradient are NaN or Inf (opt-in: it waits for the device).

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``), float32 or wider.

    Raises:
        ValueError: shapes of ``real`` and ``fake`` differ, ``alpha`` has the wrong shape,
            the batch is empty, the critic's output does not lead with the batch, unknown
            ``reduction``, negative or non-finite ``weight``/``target``, a tensor in ``args``
            whose leading dimension is not the batch, ``output`` that selects nothing.
        TypeError: integer/bool points (labels belong in ``args``), a critic returning
            something other than a tensor (a tuple or dict without ``output``: the message
            names its keys), ``args`` not a tuple, ``kwargs`` not a dict, a ``scaler`` of
            the wrong kind.
        RuntimeError: the critic's output does not depend on its input; in PyTorch, a call
            under ``torch.inference_mode()``.

    An exception that the critic itself raises on the points propagates unchanged (in
    PyTorch with a note that gives the points' shapes, and the layout hint for errors
    about shapes).

    Example:
<<example>>

    .. warning::
        The paper evaluates the penalty without BatchNorm in the critic (it couples samples,
        making per-sample gradients wrong); use LayerNorm or none.

    References:
        Gulrajani, Ahmed, Arjovsky, Dumoulin, Courville. Improved Training of Wasserstein
        GANs. NeurIPS 2017. arXiv:1704.00028.
    """

TEMPLATES["wgan_lp"] = r"""WGAN-LP: one-sided Lipschitz penalty at random interpolates.

    Symbols as in :func:`wgan_gp`; only norms above the target are penalized:

    .. math::

        \mathrm{LP} = \frac{\lambda}{B} \sum_{i=1}^{B} \max(0,\, n_i - t)^2 .

    With ``ratio=True`` the term is :math:`\max(0, n_i / t - 1)^2`.
    <<common>>

    Args:
        critic, real, fake, weight, target, ratio, alpha, <<rng_name_plain>>, args, kwargs, output, reduction, create_graph, scaler, global_batch_size, check_finite: as in :func:`wgan_gp`.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError, TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
<<example>>

    References:
        Petzka, Fischer, Lukovnikov. On the Regularization of Wasserstein GANs. ICLR 2018.
        arXiv:1709.08894.
    """

TEMPLATES["zero_gp"] = r"""0-GP: zero-centred gradient penalty at random interpolates.

    Symbols as in :func:`wgan_gp`:

    .. math::

        \mathrm{0GP} = \frac{\lambda}{B} \sum_{i=1}^{B} n_i^2 .
    <<common>>

    Args:
        critic, real, fake, weight, alpha, <<rng_name_plain>>, args, kwargs, output, reduction, create_graph, scaler, global_batch_size, check_finite: as in :func:`wgan_gp`.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError, TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
<<example>>

    References:
        Thanh-Tung, Tran, Venkatesh. Improving Generalization and Stability of Generative
        Adversarial Networks. ICLR 2019. arXiv:1902.03984.
    """

TEMPLATES["max_gp"] = r"""Max-GP (LGAN): the largest squared gradient norm over the interpolates of the batch.

    Symbols as in :func:`wgan_gp`:

    .. math::

        \mathrm{MaxGP} = \lambda \max_{i} n_i^2 .

    ``reduction`` defaults to ``"max"``; ``"none"`` gives the per-sample
    :math:`\lambda n_i^2` and ``"mean"`` makes it :func:`zero_gp`.
    <<common>>

    Args:
        critic, real, fake, weight, alpha, <<rng_name_plain>>, args, kwargs, output, create_graph, scaler, global_batch_size, check_finite: as in :func:`wgan_gp`.
        reduction: ``"max"`` (default), ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError, TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
<<example>>

    References:
        Zhou, Liang, Song, Yu, Wang, Zhang, Yu, Zhang. Lipschitz Generative Adversarial Nets.
        ICML 2019. arXiv:1902.05687.
    """

TEMPLATES["r1"] = r"""R1: zero-centred gradient penalty on real data.

    :math:`\gamma` is ``gamma``, :math:`x` is ``real``, :math:`D` is ``critic``:

    .. math::

        R_1 = \frac{\gamma}{2} \cdot \frac{1}{B} \sum_{i=1}^{B}
              \lVert \nabla_{x_i} D(x_i) \rVert_2^2 .
    <<common>>

    Args:
        critic: as in :func:`wgan_gp`.
        real: real batch (tensor or tuple of tensors).
        gamma: :math:`\gamma`, non-negative (default 10, the paper's; StyleGAN2-ADA's
            fixed presets use 0.5 to 10, and its automatic rule 0.0002·resolution²/batch).
        args, kwargs, output, reduction, create_graph, scaler, global_batch_size, check_finite: as in :func:`wgan_gp`.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError, TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
<<example>>

    References:
        Mescheder, Geiger, Nowozin. Which Training Methods for GANs do actually Converge?
        ICML 2018. arXiv:1801.04406.
    """

TEMPLATES["r2"] = r"""R2: zero-centred gradient penalty on generated data.

    :math:`\tilde x` is ``fake``, other symbols as in :func:`r1`:

    .. math::

        R_2 = \frac{\gamma}{2} \cdot \frac{1}{B} \sum_{i=1}^{B}
              \lVert \nabla_{\tilde x_i} D(\tilde x_i) \rVert_2^2 .

    R3GAN (NeurIPS 2024) uses R1 and R2 together.
    <<common>>

    Args:
        critic: as in :func:`wgan_gp`.
        fake: generated batch (tensor or tuple of tensors).
        gamma, args, kwargs, output, reduction, create_graph, scaler, global_batch_size, check_finite: as in :func:`r1`.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError, TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
<<example>>

    References:
        Mescheder, Geiger, Nowozin. Which Training Methods for GANs do actually Converge?
        ICML 2018. arXiv:1801.04406.
    """

TEMPLATES["dragan"] = r"""DRAGAN: gradient penalty around perturbed real data (two-sided, or any shape).

    :math:`x` is ``real``, :math:`u` is ``noise``, :math:`\alpha` is ``alpha``, :math:`c` is
    ``c``, :math:`\lambda` is ``weight``, :math:`t` is ``target``, :math:`\phi` is ``shape``;
    :math:`\sigma` is the standard deviation of all elements of the real batch (a constant;
    population by default, unbiased with ``ddof=1``). The reference code's perturbation
    (``perturbation="uniform"``, the default) and the paper's (``"gaussian"``):

    .. math::

        \hat x_i = x_i + \alpha_i \, c \, \sigma \, u_i \quad\text{or}\quad
        \hat x_i = x_i + \sqrt{c}\, u_i,\ u_i \sim N(0, I), \qquad
        \mathrm{DRAGAN} = \frac{\lambda}{B} \sum_{i=1}^{B} \phi(n_i),

    with :math:`\phi(n) = (n - t)^2` by default.
    <<common>>

    Args:
        critic: as in :func:`wgan_gp`.
        real: real batch (tensor or tuple of tensors; :math:`\sigma` is taken per part).
        weight, target, ratio, args, kwargs, output, reduction, create_graph, scaler, global_batch_size, check_finite: as in :func:`wgan_gp`.
        c: with ``"uniform"``, the perturbation's scale relative to :math:`\sigma` (default
            0.5, the reference code's ``0.5 * std``); with ``"gaussian"``, the *variance*
            :math:`c` of :math:`\delta \sim N(0, cI)` (its standard deviation is
            :math:`\sqrt{c}`).
        shape: the penalty on each norm, as in :func:`gradient_penalty`: ``"two_sided"``
            (default), ``"one_sided"`` (DRAGAN-LP), ``"squared"`` (zero-centred), ``"power"``
            or a :class:`gpreg.Shape`; ``target`` and ``ratio`` apply to the first two.
        perturbation: ``"uniform"`` (the authors' reference code) or ``"gaussian"`` (the
            paper's :math:`x + \delta`, :math:`\delta \sim N(0, cI)`, no :math:`\alpha`).
        ddof: 0 (default) for the population :math:`\sigma` (the reference code's NumPy
            ``std()``), 1 for the unbiased one (``torch.std``'s default, which public PyTorch
            DRAGAN code uses). Only the uniform form uses :math:`\sigma`.
        alpha: per-sample scale of the perturbation, shape ``(B,)``; ``None`` draws
            :math:`U[0, 1)` (uniform form only).
        noise: :math:`u`, shaped like ``real``; ``None`` draws it elementwise, :math:`U[0, 1)`
            (or :math:`N(0, 1)` for ``"gaussian"``), after ``alpha`` and from the same
            <<rng_name>>.
<<rng_draws>>
    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError: as in :func:`wgan_gp`, ``noise`` not shaped like ``real``, an unknown
            ``shape`` or ``perturbation``, ``ddof`` not 0 or 1, or ``alpha`` with
            ``perturbation="gaussian"``.
        TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
<<example>>

    .. warning::
        The paper perturbs with :math:`\delta \sim N(0, cI)`, :math:`c` a variance; the
        default follows the authors' reference code (uniform noise scaled by
        :math:`0.5\,\sigma`, then a random fraction :math:`\alpha` of it), which is what
        "c = 0.5" in public code refers to. Public PyTorch ports take :math:`\sigma` with
        ``torch.std``, i.e. ``ddof=1``, where the reference code's NumPy has ``ddof=0``.

    References:
        Kodali, Abernethy, Hays, Kira. On Convergence and Stability of GANs. 2017.
        arXiv:1705.07215.
    """

TEMPLATES["wgan_div"] = r"""WGAN-div: the Wasserstein divergence's gradient term, k times the p-th power of the norm.

    :math:`k` is ``k``, :math:`p` is ``p``, :math:`x` is ``real``, :math:`\tilde x` is ``fake``,
    :math:`\alpha` is ``alpha`` and :math:`D` is ``critic``:

    .. math::

        \mathrm{DIV} = \frac{k}{B} \sum_{i=1}^{B} n_i^{\,p}, \qquad
        n_i = \lVert \nabla D(u_i) \rVert_2, \quad
        u_i = \alpha_i x_i + (1 - \alpha_i)\,\tilde x_i ;

    with ``points="real_fake"`` the critic is evaluated at the real and at the fake samples and
    sample ``i``'s term is :math:`\tfrac{k}{2}\,(\lVert \nabla D(x_i) \rVert^p +
    \lVert \nabla D(\tilde x_i) \rVert^p)` (two critic evaluations). The power of the exact norm
    has a finite (zero) derivative where the input gradient is zero, for every :math:`p \ge 1`.
    <<common>>

    Args:
        critic, real, fake: as in :func:`wgan_gp`.
        k: :math:`k`, non-negative (default 2, the paper's recommendation).
        p: :math:`p \ge 1` (default 6, the paper's recommendation).
        points: ``"interpolates"`` (default; the authors' code, as WGAN-GP) or
            ``"real_fake"`` (the real and the fake samples, :math:`k/2` on each:
            PyTorch-GAN's ``wgan_div``).
        alpha: as in :func:`wgan_gp`; interpolates only.
<<rng_alpha>>        args, kwargs, output, reduction, create_graph, scaler, global_batch_size, check_finite: as in :func:`wgan_gp`.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError: as in :func:`wgan_gp`, ``p`` below 1, an unknown ``points``, or ``alpha``
            with ``points="real_fake"``.
        TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
<<example>>

    .. warning::
        The paper recommends :math:`k = 2`, :math:`p = 6`; the authors' released code uses
        :math:`p = 6` at interpolates but a weight of 10 (``k=10.0`` reproduces it), and
        PyTorch-GAN evaluates at the real and the fake samples (``points="real_fake"``).
        Code that writes ``sum(g**2) ** (p / 2)`` gets NaN at a zero gradient for
        :math:`p < 2`; code that raises ``sum(g**2)`` itself to :math:`p` computes
        :math:`n^{2p}`.

    References:
        Wu, Huang, Thoma, Acharya, Van Gool. Wasserstein Divergence for GANs. ECCV 2018.
        arXiv:1712.01026.
    """

TEMPLATES["gradient_penalty"] = r"""Any built-in penalty shape at points you choose (custom recipes, no private API).

    :math:`\hat x` is ``points``, :math:`\phi` is ``shape``, :math:`\lambda` is ``weight``:

    .. math::

        \frac{\lambda}{B} \sum_{i=1}^{B} \phi(n_i), \qquad
        \phi \in \{(n - t)^2,\ \max(0, n - t)^2,\ n^2,\ n^p\} .

    The points are used as given (detached); draw them however your recipe needs.

    Args:
        critic: as in :func:`wgan_gp`.
        points: where to evaluate (a tensor or a tuple of tensors).
        shape: ``"two_sided"``, ``"one_sided"``, ``"squared"``, ``"power"`` (:math:`n^6`;
            ``gpreg.SHAPES["power"].with_params(p=...)`` for another :math:`p \ge 1`) or a
            :class:`gpreg.Shape`.
        weight: :math:`\lambda` (default 1).
        target, ratio, args, kwargs, output, reduction, create_graph, scaler, global_batch_size, check_finite: as in :func:`wgan_gp`.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError: unknown ``shape``, and as in :func:`wgan_gp`.
        TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
<<example>>"""

TEMPLATES["grad_norm"] = r"""Per-sample input-gradient norms :math:`n_i = \lVert \nabla_{x_i} D(x_i) \rVert_2`.

    For custom penalties, logging and diagnostics (e.g. the mean norm at interpolates).
    Exact across the float range, with a finite gradient where the input gradient is zero.
    By default the norms keep their graph, so a penalty built from them trains the critic,
    as the built-in penalties do; for logging, pass ``create_graph=False`` (a plain value,
    cheaper).

    Args:
        critic: as in :func:`wgan_gp`.
        points: a tensor or a tuple of tensors.
        args, kwargs, output: as in :func:`wgan_gp`.
        create_graph: keep the graph (default), so that the norms are differentiable with
            respect to the critic's parameters; ``False`` for evaluation only.

    Returns:
        Tensor of shape ``(B,)``, float32 or wider.

    Raises:
        ValueError, TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
<<example>>"""


COST = r"""What each penalty costs on your critic, batch and device (<<framework>>), and the levers.

    Times the critic *step* training runs — zero the gradients, the WGAN loss
    :math:`\frac{1}{B}\sum D(\tilde x) - \frac{1}{B}\sum D(x)`, its gradient, an optimizer
    step — without a penalty (*plain*) and with each penalty added to the loss, paired and
    interleaved: in every round each step is timed once, in a shuffled order, and a ratio is
    the median of the per-round ratios, with their min and max. The plain step is also timed
    against itself (the *control*): its spread is the noise floor, and a difference inside it
    is not a difference. Beside the times: the ratio of the steps' matmul and convolution
    FLOPs, and of their peak memory. The levers:

    - *lazy regularization* (StyleGAN2): the penalty only every :math:`N`-th batch, as a step
      of its own (the penalty, its gradient, an optimizer step: the *alone* step, timed too),
      costs :math:`(N \cdot t_\text{plain} + t_\text{alone}) / (N \cdot t_\text{plain})` per
      batch against the plain step, for each :math:`N` in ``lazy``;
    - <<reuse>>

    <<how>>

    The critic's parameters, buffers and gradients and the optimizer's state are restored
    afterwards: measuring does not train the critic.

    Args:
        critic: the critic, as in :func:`wgan_gp` (the module or model itself: its
            parameters are what the step's optimizer updates).
        real: a real batch (a tensor, or a tuple of tensors for a multi-input critic), of the
            size you train with.
        fake: a generated batch of the same shape; ``None`` uses ``real`` rolled by one
            sample (the cost does not depend on the values).
        penalties: the penalties to measure, by name (any registered name); ``None``:
            ``wgan_gp`` and ``r1``, one evaluated at new points and one at the data.
        args, kwargs, output: as in :func:`wgan_gp`; passed to every critic call of the plain
            step and of the penalty steps.
        optimizer: <<optimizer>>; ``None``: Adam (lr 1e-4, betas (0, 0.9)), WGAN-GP's.
        lazy: the intervals :math:`N` of the lazy-regularization lever; ``()`` skips it (and
            the alone steps).
        rounds: timed rounds (each step once per round; 11 by default, 3 for a quick look).
        warmup: untimed calls of every step after its first call (the first call, which
            traces and compiles where the framework does, is timed and reported apart).
        min_sample_s: a timed sample repeats a step until it lasts about this long (0: one
            step per sample).
        flops: count the FLOPs of each step.
        memory: measure the peak memory of each step.
        seed: seed of the penalties' random draws and of the order of the steps in a round.
        progress: called with a short message at each stage (``gpreg cost`` prints them to
            stderr).

    Returns:
        A :class:`gpreg.tools.cost.CostReport`: ``summary()`` is the table (one row per step)
        with the one-line ``reading()``; ``report["wgan_gp"]`` has one penalty's ratios
        (``ratio``, ``flop_ratio``, ``memory_ratio``, ``lazy[N]``, ``reuse_saving``);
        ``to_dict()`` is JSON-ready.

    Raises:
        ValueError: an empty ``penalties``, a bad ``lazy`` interval, ``rounds`` < 1, and as in
            :func:`wgan_gp`.
        KeyError: an unknown penalty name (``gpreg.UnknownPenaltyError``).
        TypeError: a critic without parameters and no ``optimizer``, and as in
            :func:`wgan_gp`.

    Example:
<<example>>
    """


def render_cost(*, framework: str, how: str, optimizer: str, reuse: str, example: str) -> str:
    """The docstring of ``cost`` for one adapter (the shared :data:`COST` text)."""
    doc = COST.replace("<<framework>>", framework).replace("<<how>>", how)
    doc = doc.replace("<<optimizer>>", optimizer).replace("<<reuse>>", reuse)
    return _fit(doc.replace("<<example>>", example.rstrip("\n")))


#: the longest line a docstring written into the source may have (the project's line length)
WIDTH = 99
_NAMES_ENTRY = re.compile(r"^( {8})([\w<>]+(?:, [\w<>]+)+): (.*)$")


def _fit(doc: str) -> str:
    """``doc`` fit for a source file: no trailing spaces, no line over :data:`WIDTH`. An Args
    entry that lists many names (``a, b, c: as in ...``) is split into several entries; any
    other long prose line is wrapped (continued 4 deeper); example lines are left as they
    are."""
    lines = doc.split("\n")
    out: list[str] = []
    for i, line in enumerate(lines):
        if i < len(lines) - 1:  # the last line is the closing quotes' indentation
            line = line.rstrip()
        stripped = line.lstrip()
        if len(line) <= WIDTH or stripped.startswith((">>>", "...")):
            out.append(line)
            continue
        m = _NAMES_ENTRY.match(line)
        if m:
            indent, names, desc = m.groups()
            group: list[str] = []
            for name in names.split(", "):
                if group and len(f"{indent}{', '.join([*group, name])}: {desc}") > WIDTH:
                    out.append(f"{indent}{', '.join(group)}: {desc}")
                    group = []
                group.append(name)
            out.append(f"{indent}{', '.join(group)}: {desc}")
            continue
        indent = " " * (len(line) - len(stripped))
        out.extend(textwrap.wrap(stripped, WIDTH, initial_indent=indent,
                                 subsequent_indent=indent + "    ", break_long_words=False,
                                 break_on_hyphens=False))
    return "\n".join(out)


CHECK_CRITIC = r"""Check that gpreg's penalties differentiate correctly through ``critic``: run it first.

    A gradient penalty's parameter gradient is a second derivative of the critic (double
    backprop). A layer that is right to first order but not to second order leaves the
    penalty's value right and its gradient silently wrong<<known>>. This function compares
    each penalty's parameter gradient with central finite differences of the penalty's value
    along ``directions`` random directions per parameter group (each <<group>>), and
    reports the relative error per penalty and group. It also reports **sample coupling**
    (moving sample :math:`j`'s input moves sample :math:`i`'s score: batch normalization in
    training mode), non-finite values or gradients, and errors raised by double
    backprop<<errors>>, with their fixes.

    The critic itself is never run nor changed: <<copy>>. <<precision>> The evaluation points
    use a fixed ``alpha`` and DRAGAN ``noise``, and every evaluation starts from the same
    random seed and the same buffers or non-trainable state, so each penalty is a
    deterministic function of the parameters (dropout draws the same mask each time).

    Args:
        critic: <<critic>>, called as ``critic(*points, *args, **kwargs)`` as in the
            penalties. A function, a lambda or a ``functools.partial`` is refused (it could
            hide models that the check would run instead of a copy): pass
            ``check_critic(D, real, fake, args=(labels,))`` for ``lambda x: D(x, labels)``.
        real: a batch of real samples (<<data>>, or a tuple of them for a multi-input
            critic); a few samples suffice (4–16).
        fake: a batch shaped like ``real``; without it only the penalties evaluated at real
            data (``r1``, ``dragan``) are checked.
        penalties: a name or a list of names (any registered penalty); default: every
            built-in that the data allow.
        directions: random directions per parameter group.
        eps: finite-difference step, relative to each group's root mean square; default
            ``1e-4`` in float64 and ``3e-3`` in float32.
        rtol: largest accepted relative error; default ``1e-6`` in float64 and ``5e-3`` in
            float32.
        dtype: <<dtype>>
        args, kwargs, output: the critic's extra arguments and output selector, as in the
            penalties (labels, <<kwargs>>, ``output="adv_output"``); floating tensors among
            them are cast to the check's dtype.
        training: <<training>>
        <<rng>>: <<rng_doc>> that seeds the check's draws (points, directions); default:
            seed 0, so the same call gives the same report.

    Returns:
        CheckReport: (``gpreg.CheckReport``) ``ok``, ``errors`` (``{penalty: {group:
            relative error}}``), ``coupling``, ``nonfinite``, ``failures()`` and
            ``summary()`` (also ``str(report)``).

    Raises:
        TypeError: ``critic`` is not <<model>>, or the data are not <<data_kind>>.
        ValueError: a penalty needs ``fake`` and none was given; ``directions``, ``eps`` or
            ``rtol`` out of range.

    Example:
<<example>>
    """

CHECK_FILLS: dict[str, dict[str, str]] = {
    "torch": {
        "known": "", "group": "parameter tensor",
        "errors": " (a custom autograd Function marked ``@once_differentiable``,\n"
                  "    ``torch.compile``, fused attention)",
        "copy": "the check runs on a float64 deep copy (``copy.deepcopy``, then ``.to``), "
                "and the\n    parameters, buffers (BatchNorm's statistics and counter), mode "
                "and global RNG state\n    of ``critic`` stay as they were",
        "precision": "A critic that fails in float64 is checked in float32, and the report "
                     "says\n    so.",
        "critic": "the ``nn.Module`` (or its DDP or ``torch.compile`` wrapper)",
        "data": "a tensor",
        "dtype": "``\"float64\"`` or ``\"float32\"`` (or a ``torch.dtype``): the dtype of the "
                 "copy.\n            Default: float64, or float32 when the critic fails in "
                 "float64. Check in float32\n            when kernels that only run in lower "
                 "precision (fused attention, cuDNN) matter.",
        "kwargs": "``kwargs={\"c\": c}``",
        "training": "``None`` keeps the critic's mode; ``True`` or ``False`` sets it on the\n"
                    "            copy (``False``: check as used in inference mode).",
        "rng": "generator", "rng_doc": "a ``torch.Generator``",
        "model": "an ``nn.Module`` or cannot be deep-copied", "data_kind": "tensors",
    },
    "keras": {
        "known": " — Keras 3's normalization layers on\n    TensorFlow were such a case (gpreg "
                 "corrects them inside its own calls)",
        "group": "variable", "errors": "", "data_kind": "arrays",
        "copy": "a Keras 3 model goes through ``stateless_call`` with the\n    parameter values "
                "as arguments (rebuilt from its config when the check runs in another\n    "
                "dtype), a tf-keras model is rebuilt; your variables, moving statistics, seed\n"
                "    generators and Python's and NumPy's random state stay as they were",
        "precision": "The check runs in float64 on TensorFlow (the model rebuilt with a\n    "
                     "float64 dtype policy) and in float32 on JAX and torch, where Keras 3 "
                     "computes some\n    float64 operations in float32 (a larger step, a "
                     "looser tolerance; the report says so).",
        "critic": "a Keras 3 model or layer (on every backend), a :func:`stateless_critic`\n"
                  "            closure, or a tf-keras (Keras 2) model on TensorFlow",
        "data": "a tensor or NumPy array",
        "dtype": "``\"float64\"`` or ``\"float32\"``: the dtype of the copy. Default: float64 "
                 "on\n            TensorFlow (float32 when the critic fails in float64), "
                 "float32 on JAX and torch.\n            Check in float32 to test the kernels "
                 "your float32 training runs: some layers\n            pick another "
                 "implementation per dtype (tf-keras's LayerNormalization is fused,\n"
                 "            and exact, only in float32).",
        "kwargs": "``kwargs={\"training\": True}``",
        "training": "passed to the model's call (``None``: the model's default, "
                    "inference).",
        "rng": "seed", "rng_doc": "an int, a ``keras.random.SeedGenerator`` or a JAX key",
        "model": "a Keras model (a function is refused)",
    },
}


def _reflow(doc: str, width: int = 96) -> str:
    """Paragraphs (indent 4) and Args/Raises entries (indent 8, continued at 12) re-wrapped."""
    out: list[str] = []
    block: list[str] = []
    indent = 0

    def flush() -> None:
        if block:  # (no line break inside an inline literal: its spaces are held back)
            text = re.sub(r"``.*?``", lambda m: m.group().replace(" ", "\0"), " ".join(block))
            out.extend(line.replace("\0", " ") for line in textwrap.wrap(
                text, width, initial_indent=" " * indent, break_on_hyphens=False,
                subsequent_indent=" " * (indent + (4 if indent == 8 else 0)),
                break_long_words=False))
            block.clear()

    for line in doc.splitlines():
        text, ind = line.strip(), len(line) - len(line.lstrip())
        if not text or ind == 0 or (text.endswith(":") and " " not in text):
            flush()
            out.append(line)
            continue
        if ind == 8 or (ind == 4 and indent != 4):
            flush()
            indent = ind
        block.append(text)
    flush()
    return "\n".join(out)


def render_check(framework: str, example: str) -> str:
    """The docstring of ``check_critic`` for ``framework`` (``"torch"`` or ``"keras"``)."""
    doc = CHECK_CRITIC
    for key, text in CHECK_FILLS[framework].items():
        doc = doc.replace(f"<<{key}>>", text)
    return _fit(_reflow(doc).replace("<<example>>", example.rstrip("\n")))


def render(name: str, *, example: str, rng: dict[str, str], tensor: str) -> str:
    """The docstring of public function ``name`` for one adapter.

    Args:
        name: the public function.
        example: the indented body of its ``Example:`` section.
        rng: ``{"alpha": ..., "draws": ..., "name": ..., "name_plain": ...}`` lines and names
            describing the adapter's randomness argument.
        tensor: the adapter's tensor type, e.g. ``torch.Tensor``.
    """
    doc = TEMPLATES[name]
    doc = doc.replace("<<common>>", "\n    " + COMMON)
    doc = doc.replace("<<example>>", example.rstrip("\n"))
    for key in ("alpha", "draws", "name_plain", "name"):
        doc = doc.replace(f"<<rng_{key}>>", rng[key])
    doc = doc.replace("<<scaler>>", rng["scaler"])
    doc = doc.replace("<<call_args>>", CALL_ARGS)
    return _fit(doc.replace("<<tensor>>", tensor))


#: The public functions whose docstrings come from these templates, by adapter: the source
#: file (relative to the repository root) and the functions in it.
GENERATED: dict[str, dict[str, tuple[str, ...]]] = {
    adapter: {
        f"{adapter}/_penalties.py": (*TEMPLATES, "check_critic"),
        f"{adapter}/_cost.py": ("cost",),
    }
    for adapter in ("gpreg_torch", "gpreg_keras")
}


def generated() -> dict[tuple[str, str], str]:
    """``{(source file, function): docstring}`` for every templated public function of both
    adapters, rendered from the shared templates and :mod:`gpreg._doc_inputs`. The source
    files hold exactly these texts (``python tools/docstrings.py --write`` puts them there;
    tests/core/test_docstrings.py checks it), so that editors and static tools, which read
    the source, show the specification."""
    from gpreg import _doc_inputs as text

    out: dict[tuple[str, str], str] = {}
    for adapter, tag, framework, tensor in (("gpreg_torch", "TORCH", "torch", "torch.Tensor"),
                                            ("gpreg_keras", "KERAS", "keras", "tensor")):
        examples, rng = getattr(text, f"{tag}_EXAMPLES"), getattr(text, f"{tag}_RNG")
        for name in TEMPLATES:
            out[(f"{adapter}/_penalties.py", name)] = render(name, example=examples[name],
                                                             rng=rng, tensor=tensor)
        out[(f"{adapter}/_penalties.py", "check_critic")] = render_check(
            framework, getattr(text, f"{tag}_CHECK_EXAMPLE"))
        out[(f"{adapter}/_cost.py", "cost")] = render_cost(**getattr(text, f"{tag}_COST"))
    return out
