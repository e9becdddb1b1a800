"""The built-in critics of ``python -m benchmarks`` and ``gpreg cost --critic NAME``:
architectures and batch sizes, shared by the PyTorch and Keras builders
(:mod:`gpreg.tools.torch_critics`, :mod:`gpreg.tools.keras_critics`).

Framework-free, so that the Keras processes never import torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CriticSpec:
    """Architecture and batch of one benchmark critic (shared with the Keras builder)."""

    name: str
    kind: str  # "dcgan" | "mlp" | "attention"
    image: int  # side of the square RGB input
    width: int  # channels of the first conv / hidden units / model dim
    batch: int
    depth: int = 2  # hidden layers (mlp) or transformer blocks (attention)
    heads: int = 4
    patch: int = 4

    @property
    def input_shape_nchw(self) -> tuple[int, int, int, int]:
        """Batch shape of the torch input."""
        return (self.batch, 3, self.image, self.image)

    @property
    def input_shape_nhwc(self) -> tuple[int, int, int, int]:
        """Batch shape of the Keras input."""
        return (self.batch, self.image, self.image, 3)

    def describe(self) -> str:
        """One-line description used in the reports."""
        if self.kind == "dcgan":
            n = int(math.log2(self.image // 4))
            chans = [self.width * 2**i for i in range(n)]
            return f"DCGAN conv {self.image}×{self.image}, channels {chans}, batch {self.batch}"
        if self.kind == "mlp":
            return (f"MLP {3 * self.image**2}→{self.width}×{self.depth}→1 "
                    f"(on {self.image}×{self.image}×3), batch {self.batch}")
        tokens = (self.image // self.patch) ** 2
        return (f"attention, {tokens} tokens × dim {self.width}, {self.depth} blocks, "
                f"{self.heads} heads, batch {self.batch}")


def default_specs(quick: bool) -> list[CriticSpec]:
    """The critics of a full run, or tiny ones for ``--quick``."""
    if quick:
        return [
            CriticSpec("dcgan32", "dcgan", 32, 8, 4),
            CriticSpec("dcgan64", "dcgan", 64, 4, 2),
            CriticSpec("mlp", "mlp", 8, 32, 4),
            CriticSpec("attention", "attention", 16, 16, 2, depth=1, heads=2),
        ]
    # Sized so that a full run (every section, three frameworks) takes about ten minutes on
    # two CPU cores; scale the batch up on a GPU with --batch.
    return [
        CriticSpec("dcgan32", "dcgan", 32, 32, 32),
        CriticSpec("dcgan64", "dcgan", 64, 16, 32),
        CriticSpec("mlp", "mlp", 28, 512, 64),
        CriticSpec("attention", "attention", 32, 64, 16, depth=2, heads=4),
    ]
