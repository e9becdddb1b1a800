"""GPU checks for gpreg_torch (run on a CUDA machine; CI never has one).

    python tools/gpu_checks.py --out results.json

1. float16 autocast with a GradScaler and bfloat16 autocast against float32: value and
   parameter-gradient relative errors of wgan_gp and r1 on a DCGAN-like conv critic.
2. A cuDNN LSTM critic: gpreg's penalty runs (cuDNN off for its pass only); the raw double
   backward with cuDNN fails with PyTorch's own message.
3. An attention critic (scaled_dot_product_attention) in float16: gpreg runs it under the
   math kernel; the raw double backward through the fused kernel fails.
4. A torch.compile'd critic (inductor) in a full critic step with the penalty.
5. Paired timing of gpreg's wgan_gp against the canonical hand-written snippet (median of
   per-pair ratios), and of a full critic step with the penalty against the plain step.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

import gpreg_torch as gp


def dcgan(res: int = 32, ch: int = 64) -> nn.Module:
    layers, c = [], 3
    while res > 4:
        layers += [nn.Conv2d(c, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        c, ch, res = ch, ch * 2, res // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * 16, 1))


def rel(a, b):
    return max(float((x.float() - y.float()).norm() / y.float().norm())
               for x, y in zip(a, b) if y.norm() > 0)


def grads_of(value, module):
    params = list(module.parameters())
    out = torch.autograd.grad(value, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(out, params)]


def amp_checks(dev):
    torch.manual_seed(0)
    critic = dcgan().to(dev)
    real, fake = torch.randn(64, 3, 32, 32, device=dev), torch.randn(64, 3, 32, 32, device=dev)
    alpha = torch.rand(64, device=dev)
    out = {}
    for name, args, kw in (("wgan_gp", (real, fake), {"alpha": alpha}), ("r1", (real,), {})):
        fn = gp.get_penalty(name)
        ref = fn(critic, *args, **kw)
        ref_g = grads_of(ref, critic)
        scaler = torch.amp.GradScaler("cuda")
        with torch.autocast("cuda", dtype=torch.float16):
            v16 = fn(critic, *args, **kw, scaler=scaler)
        g16 = [g / scaler.get_scale() for g in grads_of(scaler.scale(v16), critic)]
        with torch.autocast("cuda", dtype=torch.float16):
            v16u = fn(critic, *args, **kw)
        g16u = grads_of(v16u, critic)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            vbf = fn(critic, *args, **kw)
        gbf = grads_of(vbf, critic)
        out[name] = {
            "float32_value": ref.item(),
            "float16_scaled": {"value_rel": abs(v16.item() / ref.item() - 1),
                               "grad_rel": rel(g16, ref_g), "scale": scaler.get_scale()},
            "float16_unscaled": {"value_rel": abs(v16u.item() / ref.item() - 1),
                                 "grad_rel": rel(g16u, ref_g)},
            "bfloat16": {"value_rel": abs(vbf.item() / ref.item() - 1),
                         "grad_rel": rel(gbf, ref_g)},
        }
    return out


class LSTMCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(8, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


def rnn_checks(dev):
    torch.manual_seed(0)
    critic = LSTMCritic().to(dev)
    x = torch.randn(16, 12, 8, device=dev)
    out = {"cudnn_enabled": torch.backends.cudnn.enabled}
    value = gp.r1(critic, x)
    value.backward()
    out["gpreg_r1_finite"] = all(torch.isfinite(p.grad).all().item()
                                 for p in critic.parameters() if p.grad is not None)
    cpu = LSTMCritic().double()
    cpu.load_state_dict({k: v.double().cpu() for k, v in critic.state_dict().items()})
    out["value_rel_vs_cpu_float64"] = abs(value.item() / gp.r1(cpu, x.double().cpu()).item() - 1)
    xr = x.clone().requires_grad_()
    try:
        (g,) = torch.autograd.grad(critic(xr).sum(), xr, create_graph=True)
        g.pow(2).sum().backward()
        out["raw_cudnn_double_backward"] = "ran"
    except RuntimeError as exc:
        out["raw_cudnn_double_backward"] = str(exc).splitlines()[0][:200]
    return out


class AttnCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(64, 192)
        self.head = nn.Linear(64, 1)

    def forward(self, x):  # (B, L, 64) -> 4 heads of 16
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, 4, 16).permute(2, 0, 3, 1, 4)
        h = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.head(h.transpose(1, 2).reshape(b, n, 64)).mean((1, 2))


def attention_checks(dev):
    torch.manual_seed(0)
    critic = AttnCritic().to(dev)
    x = torch.randn(8, 128, 64, device=dev)
    out = {}
    with torch.autocast("cuda", dtype=torch.float16):
        value = gp.r1(critic, x)
    value.backward()
    out["gpreg_r1_float16_finite"] = all(torch.isfinite(p.grad).all().item()
                                         for p in critic.parameters() if p.grad is not None)
    xr = x.clone().requires_grad_()
    try:
        with torch.autocast("cuda", dtype=torch.float16):
            (g,) = torch.autograd.grad(critic(xr).sum(), xr, create_graph=True)
        g.float().pow(2).sum().backward()
        out["raw_fused_double_backward"] = "ran"
    except RuntimeError as exc:
        out["raw_fused_double_backward"] = str(exc).splitlines()[0][:200]
    return out


def compile_checks(dev):
    torch.manual_seed(0)
    critic = dcgan().to(dev)
    compiled = torch.compile(critic)
    real, fake = torch.randn(32, 3, 32, 32, device=dev), torch.randn(32, 3, 32, 32, device=dev)
    alpha = torch.rand(32, device=dev)
    loss_c = compiled(fake).mean() - compiled(real).mean() + gp.wgan_gp(compiled, real, fake,
                                                                         alpha=alpha)
    loss_e = critic(fake).mean() - critic(real).mean() + gp.wgan_gp(critic, real, fake,
                                                                     alpha=alpha)
    return {"grad_rel_compiled_vs_eager": rel(grads_of(loss_c, critic), grads_of(loss_e, critic))}


def hand_written(critic, real, fake, alpha):
    a = alpha.view(-1, 1, 1, 1)
    x = (a * real + (1 - a) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x).sum(), x, create_graph=True)
    return 10.0 * ((g.view(g.shape[0], -1).norm(2, dim=1) - 1) ** 2).mean()


def timed(fn, dev):
    torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize(dev)
    return time.perf_counter() - t0


def timing(dev, res, batch, pairs=30):
    torch.manual_seed(0)
    critic = dcgan(res).to(dev)
    real = torch.randn(batch, 3, res, res, device=dev)
    fake = torch.randn(batch, 3, res, res, device=dev)
    alpha = torch.rand(batch, device=dev)
    params = list(critic.parameters())

    def unit(f):
        return lambda: torch.autograd.grad(f(), params, allow_unused=True)

    runs = {
        "gpreg": unit(lambda: gp.wgan_gp(critic, real, fake, alpha=alpha)),
        "hand": unit(lambda: hand_written(critic, real, fake, alpha)),
        "plain_step": unit(lambda: critic(fake).mean() - critic(real).mean()),
        "gp_step": unit(lambda: critic(fake).mean() - critic(real).mean()
                        + gp.wgan_gp(critic, real, fake, alpha=alpha)),
    }
    for f in runs.values():
        for _ in range(5):
            f()
    times = {k: [] for k in runs}
    for i in range(pairs):
        order = list(runs) if i % 2 == 0 else list(reversed(list(runs)))
        for k in order:
            times[k].append(timed(runs[k], dev))
    ratio = [a / b for a, b in zip(times["gpreg"], times["hand"])]
    cost = [a / b for a, b in zip(times["gp_step"], times["plain_step"])]
    return {
        "res": res, "batch": batch, "pairs": pairs,
        "median_ms": {k: 1e3 * statistics.median(v) for k, v in times.items()},
        "gpreg_over_hand": {"median": statistics.median(ratio), "min": min(ratio),
                            "max": max(ratio)},
        "gp_step_over_plain_step": {"median": statistics.median(cost), "min": min(cost),
                                    "max": max(cost)},
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="gpu_checks.json")
    parser.add_argument("--only", choices=["all", "timing"], default="all")
    args = parser.parse_args()
    dev = torch.device("cuda")
    report = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__}
    checks = (("amp", amp_checks), ("rnn", rnn_checks), ("attention", attention_checks),
              ("compile", compile_checks))
    if args.only == "timing":
        checks = ()
    for name, fn in checks:
        try:
            report[name] = fn(dev)
        except Exception as exc:  # report and go on: one failure must not hide the rest
            report[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        print(name, json.dumps(report[name]), flush=True)
    try:
        report["timing"] = [timing(dev, 32, 64), timing(dev, 64, 64)]
    except Exception as exc:
        report["timing"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    print("timing", json.dumps(report["timing"]), flush=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)


if __name__ == "__main__":
    main()
