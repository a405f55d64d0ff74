"""Building blocks of the VAE families: plain and gated dense stacks, residual convolutions, and the inverse
autoregressive flow (Kingma et al. 2016) with its masked (MADE) networks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedDense(nn.Module):
    """h = (W x + b) ⊙ sigmoid(V x + c): the gated dense layer of the VampPrior code (Dauphin et al. 2017)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, 2 * n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.linear(x).chunk(2, dim=-1)
        return value * torch.sigmoid(gate)


class SplitDense(nn.Module):
    """A hidden layer of its own for each slice of the input's last axis (widths ``sizes_in``), outputs joined: a
    block-diagonal layer, as the VampPrior code's p(x|z1, z2) reads z1 and z2 apart before one joint layer."""

    def __init__(self, sizes_in: list[int], n_out: int, gated: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.sizes_in = list(sizes_in)
        self.parts = nn.ModuleList(dense_stack([n, n_out], gated, True, dropout) for n in self.sizes_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slices = x.split(self.sizes_in, dim=-1)
        return torch.cat([part(piece) for part, piece in zip(self.parts, slices, strict=True)], dim=-1)


def with_fixed_parameters(module: nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """``module(*inputs)`` with its parameters taken as constants: gradients reach the inputs, not the weights."""
    fixed = {name: parameter.detach() for name, parameter in module.named_parameters()}
    return torch.func.functional_call(module, fixed, inputs)


def dense_stack(sizes: list[int], gated: bool, last_activation: bool = False, dropout: float = 0.0) -> nn.Sequential:
    """Dense layers ``sizes[0] → … → sizes[-1]``: ReLU-activated linear or gated layers; the last layer is a plain
    Linear unless ``last_activation`` (then it is a hidden layer like the others). ``dropout`` > 0 follows every
    hidden layer with dropout of that probability (Srivastava et al. 2014; active in train mode only)."""
    layers: list[nn.Module] = []
    pairs = list(zip(sizes[:-1], sizes[1:], strict=True))
    for i, (n_in, n_out) in enumerate(pairs):
        hidden = last_activation or i < len(pairs) - 1
        if hidden and gated:
            layers.append(GatedDense(n_in, n_out))
        else:
            layers.append(nn.Linear(n_in, n_out))
            if hidden:
                layers.append(nn.ReLU())
        if hidden and dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


@torch.no_grad()
def he_init_(module: nn.Module) -> nn.Module:
    """He et al. (2015)'s initialization, in place, as the VampPrior code uses it: the weights of every linear and
    (non-transposed) convolution layer ~ N(0, 2 / fan_in), where PyTorch's default draws them with a sixth of that
    variance; biases, transposed convolutions and pseudo-inputs keep their own initialization."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    return module


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(relu(x)))): two 3×3 convolutions that keep the channels and the size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.first = nn.Conv2d(channels, channels, 3, padding=1)
        self.second = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.second(F.relu(self.first(F.relu(x))))


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (MADE, Germain et al. 2015)."""

    def __init__(self, n_in: int, n_out: int, mask: torch.Tensor) -> None:
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class AutoregressiveStep(nn.Module):
    """One IAF step z' = sigma ⊙ z + (1 - sigma) ⊙ m with [m, s] = MADE(z, h), sigma = sigmoid(s) (Kingma et al.
    2016, eq. 11-14): output d depends on z_<d only (in ``order``), so the Jacobian is triangular with log-determinant
    Σ log sigma. The context h (from the encoder) enters the hidden layer unmasked."""

    def __init__(self, latent_dim: int, context_dim: int, hidden: int, order: torch.Tensor) -> None:
        super().__init__()
        degrees_hidden = torch.arange(hidden) % max(latent_dim - 1, 1)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(latent_dim)  # the position of each dimension in the autoregressive order
        hidden_mask = (degrees_hidden[:, None] >= rank[None, :]).float()  # hidden unit k sees z_d with rank ≤ k
        output_mask = (rank[:, None] > degrees_hidden[None, :]).float()  # output d sees units of lower degree
        self.inputs = MaskedLinear(latent_dim, hidden, hidden_mask)
        self.context = nn.Linear(context_dim, hidden, bias=False)
        self.hidden = MaskedLinear(hidden, hidden, (degrees_hidden[:, None] >= degrees_hidden[None, :]).float())
        self.shift = MaskedLinear(hidden, latent_dim, output_mask)
        self.gate = MaskedLinear(hidden, latent_dim, output_mask)
        # start near the identity: sigma ≈ sigmoid(2) ≈ 0.88, as the IAF paper's forget-gate bias suggests
        nn.init.constant_(self.gate.bias, 2.0)

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z …×D, h …×C (broadcast against z) → (z', log|det ∂z'/∂z| …)."""
        a = F.elu(self.inputs(z) + self.context(h))
        a = F.elu(self.hidden(a))
        log_sigma = F.logsigmoid(self.gate(a))
        sigma = torch.exp(log_sigma)
        return sigma * z + (1 - sigma) * self.shift(a), log_sigma.sum(-1)


class InverseAutoregressiveFlow(nn.Module):
    """A stack of :class:`AutoregressiveStep`, the order reversed between steps, on top of a Gaussian q(z0|x):
    log q(z_T|x) = log q(z0|x) - Σ_t log|det ∂z_t/∂z_{t-1}| (Kingma et al. 2016, eq. 15)."""

    def __init__(self, latent_dim: int, context_dim: int, hidden: int, steps: int) -> None:
        super().__init__()
        order = torch.arange(latent_dim)
        self.steps = nn.ModuleList(
            AutoregressiveStep(latent_dim, context_dim, hidden, order if t % 2 == 0 else order.flip(0))
            for t in range(steps)
        )

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z K×B×D, h B×C → (z_T, Σ log-determinants K×B)."""
        log_det = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
        for step in self.steps:
            z, step_log_det = step(z, h)
            log_det = log_det + step_log_det
        return z, log_det
