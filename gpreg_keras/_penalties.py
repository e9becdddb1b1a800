"""Public Keras 3 penalties, the same surface as ``gpreg_torch`` (``seed=`` in place of
``generator=``). Each is a thin call into :func:`gpreg_keras._core.run`; the docstrings are the
specification, shared with ``gpreg_torch`` through ``gpreg._docs``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from gpreg._check import CheckReport
from gpreg._specs import BUILTIN_NAMES, Shape, bind, get_spec
from gpreg_keras import _check, _core

Tensor = Any  # a tensor of the active Keras backend
Critic = Callable[..., Tensor]
Points = Any  # a tensor, or a tuple/list of tensors for a multi-input critic
Output = int | str | Callable[[Any], Any] | None  # picks the scores out of a structured output


def wgan_gp(
    critic: Critic,
    real: Points,
    fake: Points,
    *,
    weight: float = 10.0,
    target: float = 1.0,
    ratio: bool = False,
    alpha: Any = None,
    seed: Any = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    reduction: str = "mean",
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    r"""WGAN-GP: two-sided gradient penalty at random interpolates of real and fake.

    :math:`\lambda` is ``weight``, :math:`t` is ``target``, :math:`x` is ``real``,
    :math:`\tilde x` is ``fake``, :math:`\alpha` is ``alpha`` and :math:`D` is ``critic``:

    .. math::

        \hat x_i = \alpha_i x_i + (1 - \alpha_i)\,\tilde x_i, \qquad
        n_i = \lVert \nabla_{\hat x_i} D(\hat x_i) \rVert_2, \qquad
        \mathrm{GP} = \frac{\lambda}{B} \sum_{i=1}^{B} (n_i - t)^2 .

    With ``ratio=True`` the per-sample term is :math:`(n_i / t - 1)^2` (TF-GAN's and
    ProGAN's form, equal to :math:`(n_i - t)^2 / t^2`).

    The critic is called as ``critic(*points, *args, **kwargs)``: the evaluation points (one
    tensor, or the parts of a tuple as separate positional arguments; a Keras Functional
    model with several inputs gets them as one list), then the conditioning in ``args`` and
    ``kwargs``, passed through untouched. Its output (or the part of it that ``output``
    picks) keeps the batch as leading dimension and is summed per sample. :math:`n_i` is
    the Euclidean norm of the gradient of sample ``i``'s summed output with respect to all
    of sample ``i``'s input elements. The points, ``args`` and ``kwargs`` are detached: no
    gradient reaches ``real`` or ``fake`` (nor the generator behind them).

    Args:
        critic: callable mapping the points to scores of shape ``(B,)`` or ``(B, ...)``.
        real: real batch (a tensor, or a tuple of tensors for a multi-input critic).
        fake: generated batch, same shape(s) as ``real``.
        weight: :math:`\lambda`, non-negative (default 10, as in the paper).
        target: :math:`t`, the gradient norm the penalty pulls towards (default 1).
        ratio: use the ratio form :math:`(n/t - 1)^2`.
        alpha: interpolation weights, shape ``(B,)`` (or ``(B, 1, ..., 1)``), or a number
            for all samples; ``None`` draws :math:`\alpha_i \sim U[0, 1)` per sample.
        seed: an int, a ``keras.random.SeedGenerator`` or a JAX key for the draw of
            ``alpha``; needed under ``jax.jit`` unless ``alpha`` is given.
            An int is a fixed draw, the same numbers on every call: for tests (inside
            ``tf.function`` or ``jax.jit`` it warns once, ``gpreg.FixedSeedWarning``). In
            training pass a ``SeedGenerator`` made once outside the step (TensorFlow,
            torch) or a fresh JAX key per step (``jax.random.fold_in(key, step)``); under
            ``jax.jit`` a ``SeedGenerator`` is refused unless Keras threads its state.
        args: extra positional arguments for the critic after the points (labels, class
            embeddings, StyleGAN's ``c``): never differentiated nor interpolated; tensors in
            it need the batch as leading dimension (one row per evaluation point). Pass the
            critic module itself with ``args=`` rather than a closure: gpreg then sees the
            module (data parallelism, BatchNorm, compiled and recurrent critics).
        kwargs: extra keyword arguments for the critic (``{"training": True}`` in Keras).
        output: which part of a structured output is the score: an index, a key or
            attribute name, or a callable (``output="adv_output"``, ``output=0``,
            ``output=lambda o: o.logits``); ``None`` for a critic that returns the scores.
        reduction: ``"mean"`` (default), ``"sum"``, ``"max"`` or ``"none"`` (the scaled
            per-sample vector of shape ``(B,)``).
        create_graph: keep the graph of the input gradient so the penalty is differentiable
            with respect to the critic's parameters (double backprop). ``False`` is for
            evaluation only: a plain value (as under ``torch.no_grad()`` in PyTorch). In
            PyTorch, with a graph and the critic passed as a module, every parameter of the
            critic gets a gradient from the penalty, an exact zero where the penalty does not
            reach it (as StyleGAN2-ADA's ``logits * 0``), so that Adam and DDP see it.
        scaler: a ``keras.optimizers.LossScaleOptimizer`` for ``mixed_float16``:
            the inner gradient is taken of the output times the current loss scale
            and divided by it, and the norm is computed in float32. Under ``jax.jit``
            call it inside ``keras.StatelessScope(state_mapping=list(zip(
            optimizer.variables, optimizer_values)))`` so that the live scale is read
            (outside a scope it would be frozen at trace time: a ``ValueError``).
        global_batch_size: under data parallelism where gradients are *summed* over
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
        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: 2 * keras.ops.sum(x, axis=1)   # input gradient 2s, norm 4
        >>> real, fake = keras.ops.ones((3, 4)), keras.ops.zeros((3, 4))
        >>> float(gp.wgan_gp(critic, real, fake, alpha=keras.ops.full((3,), 0.5)))
        90.0

    .. warning::
        The paper evaluates the penalty without BatchNorm in the critic (it couples samples,
        making per-sample gradients wrong); use LayerNorm or none.

    References:
        Gulrajani, Ahmed, Arjovsky, Dumoulin, Courville. Improved Training of Wasserstein
        GANs. NeurIPS 2017. arXiv:1704.00028.
    """
    return _core.run(
        "wgan_gp", critic, real=real, fake=fake, weight=weight, target=target, ratio=ratio,
        alpha=alpha, seed=seed,
        args=args, kwargs=kwargs, output=output, reduction=reduction, create_graph=create_graph,
        scaler=scaler, global_batch_size=global_batch_size,
        check_finite=check_finite,
    )


def wgan_lp(
    critic: Critic,
    real: Points,
    fake: Points,
    *,
    weight: float = 10.0,
    target: float = 1.0,
    ratio: bool = False,
    alpha: Any = None,
    seed: Any = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    reduction: str = "mean",
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    r"""WGAN-LP: one-sided Lipschitz penalty at random interpolates.

    Symbols as in :func:`wgan_gp`; only norms above the target are penalized:

    .. math::

        \mathrm{LP} = \frac{\lambda}{B} \sum_{i=1}^{B} \max(0,\, n_i - t)^2 .

    With ``ratio=True`` the term is :math:`\max(0, n_i / t - 1)^2`.

    The critic is called as ``critic(*points, *args, **kwargs)``: the evaluation points (one
    tensor, or the parts of a tuple as separate positional arguments; a Keras Functional
    model with several inputs gets them as one list), then the conditioning in ``args`` and
    ``kwargs``, passed through untouched. Its output (or the part of it that ``output``
    picks) keeps the batch as leading dimension and is summed per sample. :math:`n_i` is
    the Euclidean norm of the gradient of sample ``i``'s summed output with respect to all
    of sample ``i``'s input elements. The points, ``args`` and ``kwargs`` are detached: no
    gradient reaches ``real`` or ``fake`` (nor the generator behind them).

    Args:
        critic, real, fake, weight, target, ratio, alpha, seed, args: as in :func:`wgan_gp`.
        kwargs, output, reduction, create_graph, scaler, global_batch_size: as in :func:`wgan_gp`.
        check_finite: as in :func:`wgan_gp`.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError, TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: 0.5 * keras.ops.sum(x, axis=1)  # norm 1 < target 2: no penalty
        >>> float(gp.wgan_lp(critic, keras.ops.ones((2, 4)), keras.ops.zeros((2, 4)), target=2.0,
        ...                  seed=0))
        0.0

    References:
        Petzka, Fischer, Lukovnikov. On the Regularization of Wasserstein GANs. ICLR 2018.
        arXiv:1709.08894.
    """
    return _core.run(
        "wgan_lp", critic, real=real, fake=fake, weight=weight, target=target, ratio=ratio,
        alpha=alpha, seed=seed,
        args=args, kwargs=kwargs, output=output, reduction=reduction, create_graph=create_graph,
        scaler=scaler, global_batch_size=global_batch_size,
        check_finite=check_finite,
    )


def zero_gp(
    critic: Critic,
    real: Points,
    fake: Points,
    *,
    weight: float = 10.0,
    alpha: Any = None,
    seed: Any = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    reduction: str = "mean",
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    r"""0-GP: zero-centred gradient penalty at random interpolates.

    Symbols as in :func:`wgan_gp`:

    .. math::

        \mathrm{0GP} = \frac{\lambda}{B} \sum_{i=1}^{B} n_i^2 .

    The critic is called as ``critic(*points, *args, **kwargs)``: the evaluation points (one
    tensor, or the parts of a tuple as separate positional arguments; a Keras Functional
    model with several inputs gets them as one list), then the conditioning in ``args`` and
    ``kwargs``, passed through untouched. Its output (or the part of it that ``output``
    picks) keeps the batch as leading dimension and is summed per sample. :math:`n_i` is
    the Euclidean norm of the gradient of sample ``i``'s summed output with respect to all
    of sample ``i``'s input elements. The points, ``args`` and ``kwargs`` are detached: no
    gradient reaches ``real`` or ``fake`` (nor the generator behind them).

    Args:
        critic, real, fake, weight, alpha, seed, args, kwargs, output: as in :func:`wgan_gp`.
        reduction, create_graph, scaler, global_batch_size, check_finite: as in :func:`wgan_gp`.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError, TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: 2 * keras.ops.sum(x, axis=1)
        >>> float(gp.zero_gp(critic, keras.ops.ones((2, 4)), keras.ops.zeros((2, 4)), seed=0))
        160.0

    References:
        Thanh-Tung, Tran, Venkatesh. Improving Generalization and Stability of Generative
        Adversarial Networks. ICLR 2019. arXiv:1902.03984.
    """
    return _core.run(
        "zero_gp", critic, real=real, fake=fake, weight=weight, alpha=alpha,
        seed=seed,
        args=args, kwargs=kwargs, output=output, reduction=reduction, create_graph=create_graph,
        scaler=scaler, global_batch_size=global_batch_size,
        check_finite=check_finite,
    )


def max_gp(
    critic: Critic,
    real: Points,
    fake: Points,
    *,
    weight: float = 10.0,
    alpha: Any = None,
    seed: Any = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    reduction: str = "max",
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    r"""Max-GP (LGAN): the largest squared gradient norm over the interpolates of the batch.

    Symbols as in :func:`wgan_gp`:

    .. math::

        \mathrm{MaxGP} = \lambda \max_{i} n_i^2 .

    ``reduction`` defaults to ``"max"``; ``"none"`` gives the per-sample
    :math:`\lambda n_i^2` and ``"mean"`` makes it :func:`zero_gp`.

    The critic is called as ``critic(*points, *args, **kwargs)``: the evaluation points (one
    tensor, or the parts of a tuple as separate positional arguments; a Keras Functional
    model with several inputs gets them as one list), then the conditioning in ``args`` and
    ``kwargs``, passed through untouched. Its output (or the part of it that ``output``
    picks) keeps the batch as leading dimension and is summed per sample. :math:`n_i` is
    the Euclidean norm of the gradient of sample ``i``'s summed output with respect to all
    of sample ``i``'s input elements. The points, ``args`` and ``kwargs`` are detached: no
    gradient reaches ``real`` or ``fake`` (nor the generator behind them).

    Args:
        critic, real, fake, weight, alpha, seed, args, kwargs, output: as in :func:`wgan_gp`.
        create_graph, scaler, global_batch_size, check_finite: as in :func:`wgan_gp`.
        reduction: ``"max"`` (default), ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError, TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: keras.ops.sum(x ** 2, axis=1)   # gradient 2x: largest at x = 1
        >>> a = keras.ops.convert_to_tensor([1.0, 0.5])
        >>> float(gp.max_gp(critic, keras.ops.ones((2, 1)), keras.ops.zeros((2, 1)), alpha=a))
        40.0

    References:
        Zhou, Liang, Song, Yu, Wang, Zhang, Yu, Zhang. Lipschitz Generative Adversarial Nets.
        ICML 2019. arXiv:1902.05687.
    """
    return _core.run(
        "max_gp", critic, real=real, fake=fake, weight=weight, alpha=alpha,
        seed=seed,
        args=args, kwargs=kwargs, output=output, reduction=reduction, create_graph=create_graph,
        scaler=scaler, global_batch_size=global_batch_size,
        check_finite=check_finite,
    )


def r1(
    critic: Critic,
    real: Points,
    *,
    gamma: float = 10.0,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    reduction: str = "mean",
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    r"""R1: zero-centred gradient penalty on real data.

    :math:`\gamma` is ``gamma``, :math:`x` is ``real``, :math:`D` is ``critic``:

    .. math::

        R_1 = \frac{\gamma}{2} \cdot \frac{1}{B} \sum_{i=1}^{B}
              \lVert \nabla_{x_i} D(x_i) \rVert_2^2 .

    The critic is called as ``critic(*points, *args, **kwargs)``: the evaluation points (one
    tensor, or the parts of a tuple as separate positional arguments; a Keras Functional
    model with several inputs gets them as one list), then the conditioning in ``args`` and
    ``kwargs``, passed through untouched. Its output (or the part of it that ``output``
    picks) keeps the batch as leading dimension and is summed per sample. :math:`n_i` is
    the Euclidean norm of the gradient of sample ``i``'s summed output with respect to all
    of sample ``i``'s input elements. The points, ``args`` and ``kwargs`` are detached: no
    gradient reaches ``real`` or ``fake`` (nor the generator behind them).

    Args:
        critic: as in :func:`wgan_gp`.
        real: real batch (tensor or tuple of tensors).
        gamma: :math:`\gamma`, non-negative (default 10, the paper's; StyleGAN2-ADA's
            fixed presets use 0.5 to 10, and its automatic rule 0.0002·resolution²/batch).
        args, kwargs, output, reduction, create_graph, scaler: as in :func:`wgan_gp`.
        global_batch_size, check_finite: as in :func:`wgan_gp`.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError, TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
        >>> import keras, gpreg_keras as gp
        >>> float(gp.r1(lambda x: 2 * keras.ops.sum(x, axis=1), keras.ops.ones((2, 4))))
        80.0

    References:
        Mescheder, Geiger, Nowozin. Which Training Methods for GANs do actually Converge?
        ICML 2018. arXiv:1801.04406.
    """
    return _core.run(
        "r1", critic, real=real, weight=gamma,
        args=args, kwargs=kwargs, output=output, reduction=reduction, create_graph=create_graph,
        scaler=scaler, global_batch_size=global_batch_size,
        check_finite=check_finite,
    )


def r2(
    critic: Critic,
    fake: Points,
    *,
    gamma: float = 10.0,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    reduction: str = "mean",
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    r"""R2: zero-centred gradient penalty on generated data.

    :math:`\tilde x` is ``fake``, other symbols as in :func:`r1`:

    .. math::

        R_2 = \frac{\gamma}{2} \cdot \frac{1}{B} \sum_{i=1}^{B}
              \lVert \nabla_{\tilde x_i} D(\tilde x_i) \rVert_2^2 .

    R3GAN (NeurIPS 2024) uses R1 and R2 together.

    The critic is called as ``critic(*points, *args, **kwargs)``: the evaluation points (one
    tensor, or the parts of a tuple as separate positional arguments; a Keras Functional
    model with several inputs gets them as one list), then the conditioning in ``args`` and
    ``kwargs``, passed through untouched. Its output (or the part of it that ``output``
    picks) keeps the batch as leading dimension and is summed per sample. :math:`n_i` is
    the Euclidean norm of the gradient of sample ``i``'s summed output with respect to all
    of sample ``i``'s input elements. The points, ``args`` and ``kwargs`` are detached: no
    gradient reaches ``real`` or ``fake`` (nor the generator behind them).

    Args:
        critic: as in :func:`wgan_gp`.
        fake: generated batch (tensor or tuple of tensors).
        gamma, args, kwargs, output, reduction, create_graph, scaler: as in :func:`r1`.
        global_batch_size, check_finite: as in :func:`r1`.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError, TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
        >>> import keras, gpreg_keras as gp
        >>> float(gp.r2(lambda x: 2 * keras.ops.sum(x, axis=1), keras.ops.zeros((2, 4)),
        ...             gamma=1.0))
        8.0

    References:
        Mescheder, Geiger, Nowozin. Which Training Methods for GANs do actually Converge?
        ICML 2018. arXiv:1801.04406.
    """
    return _core.run(
        "r2", critic, fake=fake, weight=gamma,
        args=args, kwargs=kwargs, output=output, reduction=reduction, create_graph=create_graph,
        scaler=scaler, global_batch_size=global_batch_size,
        check_finite=check_finite,
    )


def dragan(
    critic: Critic,
    real: Points,
    *,
    weight: float = 10.0,
    target: float = 1.0,
    c: float = 0.5,
    ratio: bool = False,
    shape: str | Shape = "two_sided",
    perturbation: str = "uniform",
    ddof: int = 0,
    alpha: Any = None,
    noise: Points | None = None,
    seed: Any = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    reduction: str = "mean",
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    r"""DRAGAN: gradient penalty around perturbed real data (two-sided, or any shape).

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

    The critic is called as ``critic(*points, *args, **kwargs)``: the evaluation points (one
    tensor, or the parts of a tuple as separate positional arguments; a Keras Functional
    model with several inputs gets them as one list), then the conditioning in ``args`` and
    ``kwargs``, passed through untouched. Its output (or the part of it that ``output``
    picks) keeps the batch as leading dimension and is summed per sample. :math:`n_i` is
    the Euclidean norm of the gradient of sample ``i``'s summed output with respect to all
    of sample ``i``'s input elements. The points, ``args`` and ``kwargs`` are detached: no
    gradient reaches ``real`` or ``fake`` (nor the generator behind them).

    Args:
        critic: as in :func:`wgan_gp`.
        real: real batch (tensor or tuple of tensors; :math:`\sigma` is taken per part).
        weight, target, ratio, args, kwargs, output, reduction: as in :func:`wgan_gp`.
        create_graph, scaler, global_batch_size, check_finite: as in :func:`wgan_gp`.
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
            ``seed``.
        seed: an int, a ``keras.random.SeedGenerator`` or a JAX key for the draws;
            needed under ``jax.jit`` unless ``alpha`` and ``noise`` are given.
            An int is a fixed draw, the same numbers on every call: for tests (inside
            ``tf.function`` or ``jax.jit`` it warns once, ``gpreg.FixedSeedWarning``). In
            training pass a ``SeedGenerator`` made once outside the step (TensorFlow,
            torch) or a fresh JAX key per step (``jax.random.fold_in(key, step)``); under
            ``jax.jit`` a ``SeedGenerator`` is refused unless Keras threads its state.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError: as in :func:`wgan_gp`, ``noise`` not shaped like ``real``, an unknown
            ``shape`` or ``perturbation``, ``ddof`` not 0 or 1, or ``alpha`` with
            ``perturbation="gaussian"``.
        TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: 2 * keras.ops.sum(x, axis=1)
        >>> float(gp.dragan(critic, keras.random.normal((3, 4), seed=1), alpha=keras.ops.zeros(3),
        ...                 seed=0))
        90.0
        >>> float(gp.dragan(critic, keras.random.normal((3, 4), seed=1), shape="squared",
        ...                 perturbation="gaussian", seed=0))   # the norm is 4 everywhere
        160.0

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
    return _core.run(
        "dragan", critic, real=real, weight=weight, target=target, ratio=ratio, c=c,
        shape=shape, perturbation=perturbation, ddof=ddof,
        alpha=alpha, noise=noise, seed=seed,
        args=args, kwargs=kwargs, output=output, reduction=reduction,
        create_graph=create_graph,
        scaler=scaler, global_batch_size=global_batch_size,
        check_finite=check_finite,
    )


def wgan_div(
    critic: Critic,
    real: Points,
    fake: Points,
    *,
    k: float = 2.0,
    p: float = 6.0,
    points: str = "interpolates",
    alpha: Any = None,
    seed: Any = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    reduction: str = "mean",
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    r"""WGAN-div: the Wasserstein divergence's gradient term, k times the p-th power of the norm.

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

    The critic is called as ``critic(*points, *args, **kwargs)``: the evaluation points (one
    tensor, or the parts of a tuple as separate positional arguments; a Keras Functional
    model with several inputs gets them as one list), then the conditioning in ``args`` and
    ``kwargs``, passed through untouched. Its output (or the part of it that ``output``
    picks) keeps the batch as leading dimension and is summed per sample. :math:`n_i` is
    the Euclidean norm of the gradient of sample ``i``'s summed output with respect to all
    of sample ``i``'s input elements. The points, ``args`` and ``kwargs`` are detached: no
    gradient reaches ``real`` or ``fake`` (nor the generator behind them).

    Args:
        critic, real, fake: as in :func:`wgan_gp`.
        k: :math:`k`, non-negative (default 2, the paper's recommendation).
        p: :math:`p \ge 1` (default 6, the paper's recommendation).
        points: ``"interpolates"`` (default; the authors' code, as WGAN-GP) or
            ``"real_fake"`` (the real and the fake samples, :math:`k/2` on each:
            PyTorch-GAN's ``wgan_div``).
        alpha: as in :func:`wgan_gp`; interpolates only.
        seed: an int, a ``keras.random.SeedGenerator`` or a JAX key for the draw of
            ``alpha``; needed under ``jax.jit`` unless ``alpha`` is given.
            An int is a fixed draw, the same numbers on every call: for tests (inside
            ``tf.function`` or ``jax.jit`` it warns once, ``gpreg.FixedSeedWarning``). In
            training pass a ``SeedGenerator`` made once outside the step (TensorFlow,
            torch) or a fresh JAX key per step (``jax.random.fold_in(key, step)``); under
            ``jax.jit`` a ``SeedGenerator`` is refused unless Keras threads its state.
        args, kwargs, output, reduction, create_graph, scaler: as in :func:`wgan_gp`.
        global_batch_size, check_finite: as in :func:`wgan_gp`.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError: as in :func:`wgan_gp`, ``p`` below 1, an unknown ``points``, or ``alpha``
            with ``points="real_fake"``.
        TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: keras.ops.sum(x, axis=1) / 2   # input gradient 1/2s, norm 1
        >>> real, fake = keras.ops.ones((3, 4)), keras.ops.zeros((3, 4))
        >>> float(gp.wgan_div(critic, real, fake, seed=0))   # k * 1 ** 6
        2.0
        >>> critic = lambda x: keras.ops.sum(x, axis=1)
        >>> float(gp.wgan_div(critic, real, fake, points="real_fake", p=2.0))
        8.0

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
    return _core.run(
        "wgan_div", critic, real=real, fake=fake, weight=k, shape_params={"p": p},
        points=points, alpha=alpha, seed=seed,
        args=args, kwargs=kwargs, output=output, reduction=reduction,
        create_graph=create_graph,
        scaler=scaler, global_batch_size=global_batch_size,
        check_finite=check_finite,
    )


def gradient_penalty(
    critic: Critic,
    points: Points,
    *,
    shape: str | Shape = "two_sided",
    weight: float = 1.0,
    target: float = 1.0,
    ratio: bool = False,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    reduction: str = "mean",
    create_graph: bool = True,
    scaler: Any = None,
    global_batch_size: int | None = None,
    check_finite: bool = False,
) -> Tensor:
    r"""Any built-in penalty shape at points you choose (custom recipes, no private API).

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
        target, ratio, args, kwargs, output, reduction, create_graph: as in :func:`wgan_gp`.
        scaler, global_batch_size, check_finite: as in :func:`wgan_gp`.

    Returns:
        A scalar tensor (or ``(B,)`` for ``reduction="none"``).

    Raises:
        ValueError: unknown ``shape``, and as in :func:`wgan_gp`.
        TypeError, RuntimeError: as in :func:`wgan_gp`.

    Example:
        >>> import keras, gpreg_keras as gp
        >>> critic = lambda x: 2 * keras.ops.sum(x, axis=1)
        >>> float(gp.gradient_penalty(critic, keras.ops.zeros((2, 4)), shape="squared"))
        16.0
    """
    return _core.generic(
        "gpreg_keras.gradient_penalty", critic, points, shape=shape, weight=weight,
        target=target, ratio=ratio,
        args=args, kwargs=kwargs, output=output, reduction=reduction, create_graph=create_graph,
        scaler=scaler, global_batch_size=global_batch_size,
        check_finite=check_finite,
    )


def grad_norm(
    critic: Critic,
    points: Points,
    *,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Output = None,
    create_graph: bool = True,
) -> Tensor:
    r"""Per-sample input-gradient norms :math:`n_i = \lVert \nabla_{x_i} D(x_i) \rVert_2`.

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
        >>> import keras, gpreg_keras as gp
        >>> norms = gp.grad_norm(lambda x: 2 * keras.ops.sum(x, axis=1), keras.ops.zeros((2, 4)))
        >>> [float(n) for n in norms]
        [4.0, 4.0]
    """
    return _core.grad_norm("gpreg_keras.grad_norm", critic, points, create_graph, args=args,
                           kwargs=kwargs, output=output)


def check_critic(
    critic: Any,
    real: Any,
    fake: Any = None,
    *,
    penalties: str | Sequence[str] | None = None,
    directions: int = 3,
    eps: float | None = None,
    rtol: float | None = None,
    dtype: str | None = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    output: Any = None,
    training: bool | None = None,
    seed: Any = None,
) -> CheckReport:
    r"""Check that gpreg's penalties differentiate correctly through ``critic``: run it first.

    A gradient penalty's parameter gradient is a second derivative of the critic (double
    backprop). A layer that is right to first order but not to second order leaves the penalty's
    value right and its gradient silently wrong — Keras 3's normalization layers on TensorFlow
    were such a case (gpreg corrects them inside its own calls). This function compares each
    penalty's parameter gradient with central finite differences of the penalty's value along
    ``directions`` random directions per parameter group (each variable), and reports the
    relative error per penalty and group. It also reports **sample coupling** (moving sample
    :math:`j`'s input moves sample :math:`i`'s score: batch normalization in training mode),
    non-finite values or gradients, and errors raised by double backprop, with their fixes.

    The critic itself is never run nor changed: a Keras 3 model goes through ``stateless_call``
    with the parameter values as arguments (rebuilt from its config when the check runs in
    another dtype), a tf-keras model is rebuilt; your variables, moving statistics, seed
    generators and Python's and NumPy's random state stay as they were. The check runs in
    float64 on TensorFlow (the model rebuilt with a float64 dtype policy) and in float32 on JAX
    and torch, where Keras 3 computes some float64 operations in float32 (a larger step, a
    looser tolerance; the report says so). The evaluation points use a fixed ``alpha`` and
    DRAGAN ``noise``, and every evaluation starts from the same random seed and the same buffers
    or non-trainable state, so each penalty is a deterministic function of the parameters
    (dropout draws the same mask each time).

    Args:
        critic: a Keras 3 model or layer (on every backend), a :func:`stateless_critic` closure,
            or a tf-keras (Keras 2) model on TensorFlow, called as
            ``critic(*points, *args, **kwargs)`` as in the penalties. A function, a lambda or a
            ``functools.partial`` is refused (it could hide models that the check would run
            instead of a copy): pass ``check_critic(D, real, fake, args=(labels,))`` for
            ``lambda x: D(x, labels)``.
        real: a batch of real samples (a tensor or NumPy array, or a tuple of them for a
            multi-input critic); a few samples suffice (4–16).
        fake: a batch shaped like ``real``; without it only the penalties evaluated at real data
            (``r1``, ``dragan``) are checked.
        penalties: a name or a list of names (any registered penalty); default: every built-in
            that the data allow.
        directions: random directions per parameter group.
        eps: finite-difference step, relative to each group's root mean square; default ``1e-4``
            in float64 and ``3e-3`` in float32.
        rtol: largest accepted relative error; default ``1e-6`` in float64 and ``5e-3`` in
            float32.
        dtype: ``"float64"`` or ``"float32"``: the dtype of the copy. Default: float64 on
            TensorFlow (float32 when the critic fails in float64), float32 on JAX and torch.
            Check in float32 to test the kernels your float32 training runs: some layers pick
            another implementation per dtype (tf-keras's LayerNormalization is fused, and exact,
            only in float32).
        args, kwargs, output: the critic's extra arguments and output selector, as in the
            penalties (labels, ``kwargs={"training": True}``, ``output="adv_output"``); floating
            tensors among them are cast to the check's dtype.
        training: passed to the model's call (``None``: the model's default, inference).
        seed: an int, a ``keras.random.SeedGenerator`` or a JAX key that seeds the check's draws
            (points, directions); default: seed 0, so the same call gives the same report.

    Returns:
        CheckReport: (``gpreg.CheckReport``) ``ok``, ``errors``
            (``{penalty: {group: relative error}}``), ``coupling``, ``nonfinite``,
            ``failures()`` and ``summary()`` (also ``str(report)``).

    Raises:
        TypeError: ``critic`` is not a Keras model (a function is refused), or the data are not
            arrays.
        ValueError: a penalty needs ``fake`` and none was given; ``directions``, ``eps`` or
            ``rtol`` out of range.

    Example:
        >>> import keras, numpy as np, gpreg_keras as gp
        >>> critic = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8),
        ...                            keras.layers.LayerNormalization(),
        ...                            keras.layers.Activation("tanh"), keras.layers.Dense(1)])
        >>> rng = np.random.default_rng(0)
        >>> report = gp.check_critic(critic, rng.normal(size=(6, 3)), rng.normal(size=(6, 3)))
        >>> report.ok
        True
    """
    return _check.check(critic, real, fake, penalties=penalties, directions=directions,
                        eps=eps, rtol=rtol, dtype=dtype, args=args, kwargs=kwargs,
                        output=output, training=training, seed=seed)


_PUBLIC: dict[str, Callable[..., Tensor]] = {
    f.__name__: f for f in (wgan_gp, wgan_lp, zero_gp, r1, r2, dragan, max_gp, wgan_div)
}
assert set(_PUBLIC) == set(BUILTIN_NAMES)


def get_penalty(name: str) -> Callable[..., Tensor]:
    """The penalty function registered under ``name`` (for config-driven training code).

    Built-ins return the functions of this module; plugin penalties (entry-point group
    ``gpreg.penalties``) get a function with the same calling convention.

    Args:
        name: e.g. ``"wgan_gp"``, ``"r1"``, or a plugin's name.

    Returns:
        The penalty function.

    Raises:
        gpreg.UnknownPenaltyError: (a ``KeyError``) unknown name; the message lists the
            known names.

    Example:
        >>> import gpreg_keras as gp
        >>> gp.get_penalty("r1") is gp.r1
        True
    """
    if name in _PUBLIC:
        return _PUBLIC[name]
    return bind(get_spec(name), _core.run, "gpreg_keras")

