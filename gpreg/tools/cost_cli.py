"""``gpreg cost``: what a gradient penalty costs on a built-in critic or your own.

::

    gpreg cost --critic dcgan32
    gpreg cost --critic mypkg.models:make_critic --input-shape 3,64,64 --batch 64
    gpreg cost --critic dcgan32 --framework keras --backend jax --json

It builds the critic (a built-in by name, or ``module:factory``, called without arguments),
a batch of random data, and runs ``gpreg_torch.cost`` or ``gpreg_keras.cost`` on it; the
table goes to stdout (``--json``: the report as JSON), the progress to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from typing import Any

from gpreg._specs import BUILTIN_NAMES
from gpreg.tools._text import name_list
from gpreg.tools.critics import CriticSpec, default_specs
from gpreg.tools.timing import background_load, choose_threads, limit_threads

FRAMEWORKS = ("torch", "keras")
KERAS_BACKENDS = ("tensorflow", "jax", "torch")


def builtin_critics() -> dict[str, CriticSpec]:
    """The built-in critics by name (the benchmarks' critics, at their full size)."""
    return {s.name: s for s in default_specs(False)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``gpreg cost``."""
    names = ", ".join(builtin_critics())
    p.add_argument("--critic", required=True,
                   help=f"a built-in critic ({names}) or your own as module:factory (the "
                        "factory is called without arguments and returns a torch.nn.Module "
                        "or a Keras model; the current folder is importable)")
    p.add_argument("--input-shape", default=None,
                   help="your critic's input shape per sample, comma-separated, in its layout "
                        "(e.g. 3,64,64 for a PyTorch image critic, 64,64,3 for Keras)")
    p.add_argument("--batch", type=int, default=None,
                   help="batch size (default: the built-in critic's, 64 for your own)")
    p.add_argument("--framework", choices=FRAMEWORKS, default="torch",
                   help="torch (gpreg_torch, default) or keras (gpreg_keras)")
    p.add_argument("--backend", choices=KERAS_BACKENDS, default=None,
                   help="Keras backend with --framework keras (default: KERAS_BACKEND, else "
                        "tensorflow)")
    p.add_argument("--device", default="auto",
                   help="auto (default: a GPU where the framework finds one), cpu, or cuda "
                        "(cuda:N with torch)")
    p.add_argument("--penalties", default=None,
                   help=f"comma-separated penalties, or all (default: wgan_gp,r1; built-ins: "
                        f"{', '.join(BUILTIN_NAMES)})")
    p.add_argument("--lazy", default="4,8,16",
                   help="lazy-regularization intervals, comma-separated (default 4,8,16; 0: "
                        "none)")
    p.add_argument("--rounds", "--repeats", type=int, default=None,
                   help="timed rounds, each step once per round (default 11; 3 with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="3 rounds, one step per sample, no warm-up beyond the first call: a "
                        "first look in a fraction of the time, noisier")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of the framework (default: the usable cores not kept "
                        "busy by other processes)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the draws")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


class UsageError(Exception):
    """A bad option: reported in one line, exit status 2."""


def _csv_ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UsageError(f"--{what} takes comma-separated integers, e.g. 4,8,16; got "
                         f"{text!r}") from None
    return values


def _factory(ref: str) -> Any:
    """The object ``module:attribute`` names, with the current folder importable."""
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise UsageError(f"--critic {ref!r} is neither a built-in critic ("
                         f"{', '.join(builtin_critics())}) nor module:factory")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--critic {ref}: cannot import {module_name!r} ({exc}); run from the "
                         f"folder that holds it or install it") from exc
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise UsageError(f"--critic {ref}: {module_name} has no attribute {attr!r}") from None
    if not callable(obj):
        raise UsageError(f"--critic {ref}: {attr} is a {type(obj).__name__}, not a factory")
    return obj


def _framework(args: argparse.Namespace) -> str:
    """``torch``, ``keras-tensorflow``, ``keras-jax`` or ``keras-torch``; Keras's backend is
    put into the environment here, before anything imports Keras."""
    if args.framework == "torch":
        if args.backend is not None:
            raise UsageError("--backend is for --framework keras")
        return "torch"
    backend = args.backend or os.environ.get("KERAS_BACKEND") or "tensorflow"
    if backend not in KERAS_BACKENDS:
        raise UsageError(f"KERAS_BACKEND={backend!r}: gpreg cost runs Keras on "
                         f"{', '.join(KERAS_BACKENDS)}")
    if "keras" in sys.modules and os.environ.get("KERAS_BACKEND", "tensorflow") != backend:
        raise UsageError(f"Keras is already imported with another backend; run with "
                         f"KERAS_BACKEND={backend}")
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.device == "cpu":  # hide GPUs before the backend starts
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        if backend == "jax":
            os.environ["JAX_PLATFORMS"] = "cpu"
    return f"keras-{backend}"


def _threads(args: argparse.Namespace, framework: str, say: Any) -> None:
    if args.threads is not None:
        n, why = args.threads, "--threads"
        if n < 1:
            raise UsageError(f"--threads must be at least 1, got {n}")
    else:
        n, why = choose_threads(background_load(0.5))
    engine = {"torch": "torch", "keras-tensorflow": "tensorflow", "keras-jax": "jax",
              "keras-torch": "torch"}[framework]
    limit_threads(engine, n)
    say(f"{n} CPU thread{'s' if n != 1 else ''} ({why})")


def _shape(args: argparse.Namespace, spec: CriticSpec | None, keras_layout: bool
           ) -> tuple[int, ...]:
    if spec is not None:
        fixed = (spec.input_shape_nhwc if keras_layout else spec.input_shape_nchw)[1:]
        if args.input_shape is not None:
            raise UsageError(f"--input-shape is for your own critic; {spec.name} takes {fixed}")
        return fixed
    if args.input_shape is None:
        raise UsageError("--input-shape is needed with your own critic, e.g. --input-shape "
                         "3,64,64")
    shape = _csv_ints(args.input_shape, "input-shape")
    if not shape or min(shape) < 1:
        raise UsageError(f"--input-shape needs positive sizes, got {args.input_shape!r}")
    return shape


def _data(shape: tuple[int, ...], seed: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(seed)
    return np.clip(rng.standard_normal(shape), -1, 1).astype(np.float32)


def _torch_run(args: argparse.Namespace, spec: CriticSpec | None, shape: tuple[int, ...],
               options: dict[str, Any]) -> Any:
    import torch

    import gpreg_torch as gp
    from gpreg.tools import torch_critics

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: torch.cuda.is_available() is False here")
    if spec is not None:
        critic = torch_critics.build(spec, device, seed=args.seed)
    else:
        torch.manual_seed(args.seed)
        critic = _factory(args.critic)()
        if not isinstance(critic, torch.nn.Module):
            raise UsageError(f"--critic {args.critic} returned a {type(critic).__name__}, not "
                             f"a torch.nn.Module")
        critic = critic.to(device)
    real = torch.from_numpy(_data(shape, args.seed + 1)).to(device)
    fake = torch.from_numpy(_data(shape, args.seed + 2)).to(device)
    return gp.cost(critic, real, fake, **options)


def _keras_run(args: argparse.Namespace, spec: CriticSpec | None, shape: tuple[int, ...],
               options: dict[str, Any]) -> Any:
    import keras

    import gpreg_keras as gp
    from gpreg.tools import keras_critics

    if args.device.startswith("cuda") and not _keras_sees_gpu():
        raise UsageError(f"--device cuda: Keras's {keras.backend.backend()} backend sees no GPU")
    if spec is not None:
        critic = keras_critics.build(spec, seed=args.seed)
    else:
        keras.utils.set_random_seed(args.seed)
        critic = _factory(args.critic)()
        if not isinstance(critic, keras.Layer):
            raise UsageError(f"--critic {args.critic} returned a {type(critic).__name__}, not "
                             f"a Keras model")
    real = keras.ops.convert_to_tensor(_data(shape, args.seed + 1))
    fake = keras.ops.convert_to_tensor(_data(shape, args.seed + 2))
    return gp.cost(critic, real, fake, **options)


def _keras_sees_gpu() -> bool:
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    import torch

    return torch.cuda.is_available()


def main(args: argparse.Namespace) -> int:
    """Run ``gpreg cost``; the exit status (0 measured, 2 a bad option, 1 a failure)."""
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"gpreg cost [{time.perf_counter() - t0:5.1f} s]: {msg}", file=sys.stderr,
              flush=True)

    try:
        framework = _framework(args)
        builtins = builtin_critics()
        spec = builtins.get(args.critic)
        if spec is None and ":" not in args.critic:
            raise UsageError(f"unknown critic {args.critic!r}: a built-in ({', '.join(builtins)}) "
                             f"or your own as module:factory")
        batch = args.batch if args.batch is not None else (spec.batch if spec else 64)
        if batch < 1:
            raise UsageError(f"--batch must be at least 1, got {batch}")
        shape = (batch, *_shape(args, spec, keras_layout=framework != "torch"))
        lazy = tuple(n for n in _csv_ints(args.lazy, "lazy") if n != 0)
        try:
            penalties = list(BUILTIN_NAMES) if args.penalties == "all" else (
                None if args.penalties is None else
                name_list(args.penalties, "penalty", list(BUILTIN_NAMES)))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if args.rounds is not None and args.rounds < 1:
            raise UsageError(f"--rounds must be at least 1, got {args.rounds}")
        _threads(args, framework, say)
        options: dict[str, Any] = {
            "penalties": penalties, "lazy": lazy,
            "rounds": args.rounds or (3 if args.quick else 11),
            "warmup": 0 if args.quick else 1, "min_sample_s": 0.0 if args.quick else 0.05,
            "flops": not args.no_flops, "memory": not args.no_memory, "seed": args.seed,
            "progress": say}
        say(f"{framework}: building the critic {args.critic} and a batch of {batch}")
        run = _torch_run if framework == "torch" else _keras_run
        report = run(args, spec, shape, options)
    except UsageError as exc:
        print(f"gpreg cost: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"gpreg cost: {exc}; install the framework, e.g. pip install 'gpreg[torch]' or "
              f"'gpreg[jax]'", file=sys.stderr)
        return 2
    say(f"done in {time.perf_counter() - t0:.0f} s")
    if args.json:
        doc = report.to_dict()
        doc["command"] = {"critic": args.critic, "framework": framework, "batch": batch,
                          "seconds": round(time.perf_counter() - t0, 1)}
        json.dump(doc, sys.stdout, indent=1)
        print()
    else:
        print(report.summary())
    return 0
