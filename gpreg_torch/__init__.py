"""gpreg for PyTorch: gradient penalties with double backprop through ``torch.autograd``.

    >>> import gpreg_torch as gp
    >>> # loss_d = fake_scores.mean() - real_scores.mean() + gp.wgan_gp(critic, real, fake)
"""

from gpreg._lazy import LazyRegularization as LazyRegularization
from gpreg_torch._cost import cost as cost
from gpreg_torch._penalties import check_critic as check_critic
from gpreg_torch._penalties import dragan as dragan
from gpreg_torch._penalties import from_scores as from_scores
from gpreg_torch._penalties import get_penalty as get_penalty
from gpreg_torch._penalties import grad_norm as grad_norm
from gpreg_torch._penalties import gradient_penalty as gradient_penalty
from gpreg_torch._penalties import max_gp as max_gp
from gpreg_torch._penalties import r1 as r1
from gpreg_torch._penalties import r2 as r2
from gpreg_torch._penalties import wgan_div as wgan_div
from gpreg_torch._penalties import wgan_gp as wgan_gp
from gpreg_torch._penalties import wgan_lp as wgan_lp
from gpreg_torch._penalties import zero_gp as zero_gp

__all__ = [
    "LazyRegularization",
    "check_critic",
    "cost",
    "dragan",
    "from_scores",
    "get_penalty",
    "grad_norm",
    "gradient_penalty",
    "max_gp",
    "r1",
    "r2",
    "wgan_div",
    "wgan_gp",
    "wgan_lp",
    "zero_gp",
]
