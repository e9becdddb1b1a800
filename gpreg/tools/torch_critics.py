"""The built-in critics in PyTorch (NCHW images); ``keras_critics`` builds the same ones.

Architectures (sizes in :mod:`gpreg.tools.critics`):

- ``dcgan32`` / ``dcgan64``: DCGAN-like strided 4×4 convolutions (stride 2, padding 1),
  LeakyReLU(0.2), no normalization (a penalty needs per-sample gradients), a linear head.
- ``mlp``: flattened image → two LeakyReLU hidden layers → 1.
- ``attention``: 4×4 patch embedding, learned positions, pre-LayerNorm transformer blocks
  whose attention is written with explicit matmul + softmax (PyTorch's fused CPU/flash
  attention kernels have no double backward; the explicit form is the same arithmetic as
  ``SDPBackend.MATH``), mean pooling, a linear head.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gpreg.tools.critics import CriticSpec, default_specs

__all__ = ["CriticSpec", "batch", "build", "default_specs"]


class DCGANCritic(nn.Module):
    """Strided-conv critic: image → … → 4×4 feature map → linear score."""

    def __init__(self, image: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in, c_out, side = 3, width, image
        while side > 4:
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.LeakyReLU(0.2)]
            c_in, c_out, side = c_out, c_out * 2, side // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in * 4 * 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of shape (B, 1)."""
        return self.head(self.features(x).flatten(1))


class MLPCritic(nn.Module):
    """Flattened image → ``depth`` LeakyReLU layers of ``width`` units → score."""

    def __init__(self, in_features: int, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.LeakyReLU(0.2)]
            d = width
        layers.append(nn.Linear(d, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of shape (B, 1)."""
        return self.net(x)


class Block(nn.Module):
    """Pre-LayerNorm transformer block with explicit softmax attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.act = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) → (B, T, D)."""
        b, t, d = x.shape
        h, dh = self.heads, d // self.heads
        qkv = self.qkv(self.ln1(x)).reshape(b, t, 3, h, dh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.softmax(q @ k.transpose(-2, -1) * (1.0 / math.sqrt(dh)), dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class AttentionCritic(nn.Module):
    """Patch embedding → transformer blocks → mean over tokens → score."""

    def __init__(self, image: int, dim: int, depth: int, heads: int, patch: int) -> None:
        super().__init__()
        tokens = (image // patch) ** 2
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scores of shape (B, 1)."""
        tok = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.ln(self.blocks(tok)).mean(dim=1))


def build(spec: CriticSpec, device: str = "cpu", seed: int = 0) -> nn.Module:
    """Instantiate ``spec`` with a fixed seed, on ``device``, float32."""
    torch.manual_seed(seed)
    if spec.kind == "dcgan":
        model: nn.Module = DCGANCritic(spec.image, spec.width)
    elif spec.kind == "mlp":
        model = MLPCritic(3 * spec.image**2, spec.width, spec.depth)
    elif spec.kind == "attention":
        model = AttentionCritic(spec.image, spec.width, spec.depth, spec.heads, spec.patch)
    else:
        raise ValueError(f"unknown critic kind {spec.kind!r}")
    return model.to(device=device, dtype=torch.float32)


def batch(spec: CriticSpec, device: str = "cpu", seed: int = 1) -> tuple[torch.Tensor, ...]:
    """A real batch, a fake batch and per-sample alphas U[0, 1), fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    real = torch.randn(spec.input_shape_nchw, generator=g).clamp_(-1, 1)
    fake = torch.randn(spec.input_shape_nchw, generator=g).clamp_(-1, 1)
    alpha = torch.rand(spec.batch, generator=g)
    return real.to(device), fake.to(device), alpha.to(device)
