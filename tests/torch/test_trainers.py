"""gpreg_torch inside PyTorch Lightning and Hugging Face Accelerate.

For each framework and precision, every penalty of one fixture critic runs the framework's
way — a LightningModule with manual optimization and ``self.manual_backward``, or
``accelerator.backward`` after ``accelerator.prepare`` — with ``scaler=`` the framework's own
object (``self.trainer.precision_plugin``, the ``Accelerator``). The parameter gradients,
after the framework's optimizer step has unscaled them, must equal plain PyTorch's on the same
critic and data (the same autocast and GradScaler by hand), and the float64 reference of
``gpreg/fixtures/generate.py`` to the tolerance of the precision. lightning and accelerate are
pinned in the ``test`` extra.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

import gpreg_torch as gp
from gpreg import fixtures
from gpreg._tolerances import assert_close
from gpreg_torch import _core
from gpreg_torch._fixture import build_critic, case_arguments

L = pytest.importorskip("lightning")
accelerate = pytest.importorskip("accelerate")

from accelerate.state import AcceleratorState, GradientState  # noqa: E402
from lightning.pytorch.plugins.precision import MixedPrecision, Precision  # noqa: E402

FIXTURE = next(f for f in fixtures.load() if f.name == "conv")
INIT_SCALE = 2.0**10  # the default 2**16 overflows float16 in the first inner backward
SMALL = 1e-6


class Small(nn.Module):
    """The fixture critic with scores 1e-6 as large: under float16 its input gradients are
    subnormal unless the inner backward is scaled, so this critic tells whether gpreg used
    the framework's GradScaler. R1 with γ / 1e-12 is then exactly the fixture's R1 (its value
    is 0.07% off with the scaler, 12% without). Only the value is compared: with so large a
    γ the second-order backward overflows float16 and the optimizer step is skipped, as
    GradScaler does for any overflow."""

    def __init__(self, critic: nn.Module) -> None:
        super().__init__()
        self.critic = critic

    def forward(self, *x: torch.Tensor) -> torch.Tensor:
        return SMALL * self.critic(*x)


def make_critic(small: bool) -> nn.Module:
    critic = build_critic(FIXTURE, torch.float32)
    return Small(critic) if small else critic


def cases(small: bool) -> list[tuple[Any, dict[str, Any]]]:
    """(fixture case, keyword arguments that override the case's)."""
    if small:
        r1 = FIXTURE.case("r1")
        return [(r1, {"gamma": r1.kwargs["gamma"] / SMALL**2})]
    return [(case, {}) for case in FIXTURE.cases]


def penalty(case: Any, extra: dict[str, Any], critic: nn.Module, scaler: Any) -> torch.Tensor:
    args, kwargs = case_arguments(FIXTURE, case, torch.float32)
    return gp.get_penalty(case.penalty)(critic, *args, **{**kwargs, **extra},
                                        reduction=case.reduction, scaler=scaler)


def grads_of(critic: nn.Module) -> list[torch.Tensor]:
    """The parameters' gradients; zeros where the penalty reaches none (the last bias)."""
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone()
            for p in critic.parameters()]


def reference_grads(precision: str, small: bool,
                    cache: bool = True) -> tuple[list[float], list[list[Any]]]:
    """Plain PyTorch: autocast and a GradScaler by hand, one penalty at a time.

    ``cache`` is autocast's weight-cast cache, as the framework sets it (Lightning turns it
    off). It matters where a penalty calls the critic twice (WGAN-div at real and fake): with
    the cache both calls share one low-precision copy of each weight, whose gradient is then
    summed in that precision, one rounding (0.4 % in bfloat16) away from the sum without it.
    """
    critic = make_critic(small)
    opt = torch.optim.SGD(critic.parameters(), lr=0.0)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE, enabled=precision == "fp16")
    values, grads = [], []
    for case, extra in cases(small):
        opt.zero_grad(set_to_none=False)
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None,
                            cache_enabled=cache):
            value = penalty(case, extra, critic, scaler)
        scaler.scale(value).backward()
        scaler.step(opt)
        scaler.update()
        values.append(value.item())
        grads.append(grads_of(critic))
    return values, grads


TOLERANCE = {"32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def check(precision: str, small: bool, values: list[float], grads: list[list[Any]],
          cache: bool = True) -> None:
    ref_values, ref_grads = reference_grads(precision, small, cache)
    names = [n for n, _ in build_critic(FIXTURE, torch.float32).named_parameters()]
    assert len(values) == len(ref_values) == len(cases(small))
    for (case, _), value, ref_value, got, ref in zip(cases(small), values, ref_values, grads,
                                                     ref_grads):
        where = f"{precision}/{case.id}" + ("/small scores" if small else "")
        # the framework's way equals plain PyTorch's ...
        assert_close(value, ref_value, "float32", err_msg=f"{where}: value vs plain torch")
        if small:
            assert_close(value, case.value, TOLERANCE[precision], err_msg=f"{where}: value")
            continue
        for n, g, r in zip(names, got, ref):
            assert_close(g.numpy(), r.numpy(), "float32", err_msg=f"{where}: d/d{n} vs torch")
        # ... and both the float64 reference, to the precision's accuracy; except in bfloat16
        # for wgan_lp, whose target the fixture puts at the median norm: n - t cancels, and
        # bfloat16's 8-bit mantissa leaves its value 7% off in plain PyTorch too
        if precision == "bf16" and case.penalty == "wgan_lp":
            continue
        tol = TOLERANCE[precision]
        assert_close(value, case.value, tol, err_msg=f"{where}: value")
        for n, g in zip(names, got):
            assert_close(g.numpy(), case.grads[n], tol, err_msg=f"{where}: d/d{n}")


# --- what scaler= accepts -------------------------------------------------------------------

@pytest.fixture
def fresh_accelerate():
    """Accelerate keeps its configuration in process-wide singletons: reset them around each
    test (as Accelerate's own tests do), so that each test can pick its mixed precision."""
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_scaler_takes_the_grad_scaler_an_accelerator_or_a_precision_plugin_holds(
        fresh_accelerate):
    scaler = torch.amp.GradScaler("cpu")
    assert _core._grad_scaler(scaler) is scaler
    assert _core._grad_scaler(MixedPrecision("16-mixed", "cpu", scaler=scaler)) is scaler
    assert _core._grad_scaler(MixedPrecision("bf16-mixed", "cpu")) is None
    assert _core._grad_scaler(Precision()) is None  # Trainer(precision="32-true")
    accelerator = accelerate.Accelerator(cpu=True)
    assert _core._grad_scaler(accelerator) is None
    accelerator.scaler = scaler  # what Accelerator(mixed_precision="fp16") holds on a GPU
    assert _core._grad_scaler(accelerator) is scaler


@pytest.mark.parametrize("wrong", [1024.0, torch.optim.SGD([torch.zeros(1)], lr=0.1)],
                         ids=["a number", "an optimizer"])
def test_scaler_of_another_kind_is_a_clear_error(wrong):
    critic = build_critic(FIXTURE, torch.float32)
    real = torch.as_tensor(FIXTURE.real[0], dtype=torch.float32)
    with pytest.raises(TypeError, match=r"gpreg_torch\.r1: scaler must be the torch\.amp\."
                                        r"GradScaler .*, or an accelerate\.Accelerator or a "
                                        r"Lightning precision plugin"):
        gp.r1(critic, real, scaler=wrong)


# --- PyTorch Lightning ----------------------------------------------------------------------

class PenaltyModule(L.LightningModule):
    """Manual optimization: each penalty of the fixture, backward, step (lr 0), record."""

    def __init__(self, small: bool) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.small = small
        self.critic = make_critic(small)
        self.values: list[float] = []
        self.grads: list[list[torch.Tensor]] = []

    def configure_optimizers(self):
        return torch.optim.SGD(self.critic.parameters(), lr=0.0)

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        for case, extra in cases(self.small):
            opt.zero_grad(set_to_none=False)
            # the line, with the trainer's precision plugin as the scaler
            value = penalty(case, extra, self.critic, scaler=self.trainer.precision_plugin)
            self.manual_backward(value)
            opt.step()  # 16-mixed: Lightning unscales the gradients in place here
            self.values.append(value.item())
            self.grads.append(grads_of(self.critic))

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(1)))


LIGHTNING = {
    "32": {"precision": "32-true"},
    "bf16": {"precision": "bf16-mixed"},
    # Trainer(precision="16-mixed") on a CPU falls back to bf16-mixed; the plugin does not
    "fp16": {"plugins": [MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler(
        "cpu", init_scale=INIT_SCALE))]},
}
RUNS = [(p, False) for p in LIGHTNING] + [("fp16", True)]
RUN_IDS = [p + ("-small-scores" if s else "") for p, s in RUNS]


@pytest.mark.parametrize(("precision", "small"), RUNS, ids=RUN_IDS)
def test_lightning_manual_backward_gives_plain_torch_gradients(precision, small):
    module = PenaltyModule(small)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, **copy.deepcopy(LIGHTNING[precision]))
    trainer.fit(module)
    if precision == "fp16" and not small:
        assert trainer.precision_plugin.scaler.get_scale() == INIT_SCALE  # nothing overflowed
    check(precision, small, module.values, module.grads, cache=False)  # Lightning's autocast


# --- Hugging Face Accelerate ----------------------------------------------------------------

def accelerated_grads(accelerator: Any, small: bool) -> tuple[list[float], list[list[Any]]]:
    critic = make_critic(small)
    critic, opt = accelerator.prepare(critic, torch.optim.SGD(critic.parameters(), lr=0.0))
    values, grads = [], []
    for case, extra in cases(small):
        opt.zero_grad(set_to_none=False)
        with accelerator.autocast():
            value = penalty(case, extra, critic, scaler=accelerator)  # the line
        accelerator.backward(value)
        opt.step()  # with a scaler: GradScaler.step unscales in place, then steps
        values.append(value.item())
        grads.append(grads_of(critic))
    return values, grads


@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_accelerate_backward_gives_plain_torch_gradients(precision, fresh_accelerate):
    accelerator = accelerate.Accelerator(
        cpu=True, mixed_precision={"32": "no", "bf16": "bf16"}[precision])
    check(precision, False, *accelerated_grads(accelerator, False))


@pytest.mark.parametrize("small", [False, True], ids=["", "small-scores"])
def test_accelerate_fp16_with_its_grad_scaler(small, fresh_accelerate):
    """On a CPU Accelerate turns fp16 off (no autocast, no scaler: plain float32); on a GPU it
    autocasts the prepared model's forward to float16 and holds a GradScaler as
    ``accelerator.scaler``. Here that GPU configuration is set on the CPU by hand — the same
    two attributes Accelerate sets — so that ``accelerator.backward`` and the prepared
    optimizer run their GradScaler code, with gpreg's ``scaler=accelerator``."""
    accelerator = accelerate.Accelerator(cpu=True, mixed_precision="fp16")
    assert accelerator.scaler is None and not accelerator.native_amp  # fp16 is off on a CPU
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=INIT_SCALE)
    values, grads = accelerated_grads(accelerator, small)
    if not small:
        assert accelerator.scaler.get_scale() == INIT_SCALE  # nothing overflowed
    check("fp16", small, values, grads)
