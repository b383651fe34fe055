"""ScaledResNet: the finite mean-field ResNet of Chen et al. 2024 (docs/meanfield.md, "The model").

    z_0     = E x                      (E fixed: identity when input_dim == d)
    z_{l+1} = z_l + (c_L / M) * sum_m u_{l,m} * s(w_{l,m}^T z_l + b_{l,m}),   l < L
    f(x)    = (beta / K) * sum_k a_k * s(w'_k^T z_L)

The parameters ARE the particles theta_{l,m} = (u, w, b) in R^{2d+1} and
theta'_k = (a, w') in R^{1+d}; the 1/M and 1/K averages are in the forward pass, so
"mean-field" initialisation draws O(1) i.i.d. Gaussian particles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigurationError
from ._activations import ActivationSpec, get_activation
from ._types import InitName, ScalingName

__all__ = ["ScaledResNet", "PriorSpec", "ResNetConfig", "Particles"]

_SCALINGS = ("mean-field", "sqrt", "none")
_INITS = ("mean-field", "standard", "paired")


@dataclass(frozen=True)
class PriorSpec:
    """The Gaussian initialisation distribution nu_0 of the particles (standard deviations).

    Residual particle (u, w, b) ~ N(0, diag(sigma_u^2 I_d, sigma_w^2 I_d, sigma_b^2));
    head particle (a, w') ~ N(0, diag(sigma_a^2, sigma_head_w^2 I_d)). Independent
    coordinates, so every KL in this module is taken against a product Gaussian.
    """

    sigma_u: float
    sigma_w: float
    sigma_b: float
    sigma_a: float
    sigma_head_w: float

    def residual_std(self, d: int) -> np.ndarray:
        """Per-coordinate standard deviation of a residual particle, shape (2d+1,)."""
        return np.concatenate(
            [np.full(d, self.sigma_u), np.full(d, self.sigma_w), [self.sigma_b]]
        ).astype(np.float64)

    def head_std(self, d: int) -> np.ndarray:
        """Per-coordinate standard deviation of a head particle, shape (1+d,)."""
        return np.concatenate([[self.sigma_a], np.full(d, self.sigma_head_w)]).astype(
            np.float64
        )


@dataclass(frozen=True)
class ResNetConfig:
    """Everything needed to rebuild a ScaledResNet (no weights)."""

    d: int
    depth: int
    width: int
    head_width: int
    scaling: str | float
    alpha: float
    beta: float
    activation: str
    init: str
    input_dim: int
    seed: int


@dataclass(frozen=True)
class Particles:
    """The particles of a ScaledResNet as float64 arrays.

    ``residual``: shape (L, M, 2d+1), columns (u, w, b); ``head``: shape (K, 1+d),
    columns (a, w'). Units: raw parameter values (not whitened).
    """

    residual: np.ndarray
    head: np.ndarray


class ScaledResNet(nn.Module):
    """A residual network with an explicit depth scaling and mean-field parametrisation.

    Args:
        d: hidden dimension of the residual stream.
        depth: number of residual blocks L (>= 1).
        width: particles per block M (>= 1).
        head_width: particles in the head K (>= 1).
        scaling: residual multiplier c_L: ``"mean-field"`` = alpha/L (the regime the
            theory covers), ``"sqrt"`` = alpha/sqrt(L) (neural-SDE limit, out of scope),
            ``"none"`` = 1 (unstable as L grows, out of scope), or a positive number
            used as c_L directly.
        alpha, beta: the residual and head scales of the mean-field model (> 0).
        activation: ``"tanh"`` (default), ``"sigmoid"`` (both covered), ``"gelu"``,
            ``"silu"`` (smooth but unbounded) or ``"relu"`` (not covered).
        init: ``"mean-field"`` draws O(1) particles (u ~ N(0, I), w ~ N(0, I/d),
            b ~ N(0, 1), a ~ N(0, 1), w' ~ N(0, I/d)); ``"standard"`` multiplies u by
            sqrt(M) and a by sqrt(K), which is PyTorch's 1/sqrt(fan_in) scale for
            V = u/M: the lazy regime. ``"paired"`` draws mean-field particles in
            sign-flipped pairs (u, w, b), (-u, w, b) and (a, w'), (-a, w') (M and K even),
            so that f = 0 and z_L = z_0 at initialisation exactly, as in the infinite-width
            limit (E[u] = E[a] = 0); without it the finite-width initial output is of
            order beta/sqrt(K), which a large beta turns into a large initial loss.
        input_dim: input features p; the fixed embedding E is the identity when p == d,
            otherwise a fixed N(0, 1/p) matrix (a buffer, never trained). Default d.
        seed: seeds the initial particles and E.
        dtype: parameter dtype (float64 by default: the Gram eigenvalues need it).

    ``forward(x)`` maps x of shape (n, input_dim) to f(x) of shape (n,).
    """

    def __init__(
        self,
        d: int,
        depth: int,
        width: int,
        head_width: int,
        scaling: ScalingName | float = "mean-field",
        alpha: float = 1.0,
        beta: float = 1.0,
        *,
        activation: str = "tanh",
        init: InitName = "mean-field",
        input_dim: int | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        for name, value in (("d", d), ("depth", depth), ("width", width),
                            ("head_width", head_width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"ScaledResNet: {name} must be an integer >= 1, got {value!r}")
        for name, fvalue in (("alpha", alpha), ("beta", beta)):
            if not (isinstance(fvalue, int | float) and math.isfinite(fvalue) and fvalue > 0):
                raise ConfigurationError(f"ScaledResNet: {name} must be a finite number > 0, got {fvalue!r}")
        if isinstance(scaling, str):
            if scaling not in _SCALINGS:
                raise ConfigurationError(
                    f"ScaledResNet: unknown scaling '{scaling}'; use one of "
                    f"{', '.join(_SCALINGS)} or a positive number"
                )
        elif isinstance(scaling, bool) or not (
            isinstance(scaling, int | float) and math.isfinite(scaling) and scaling > 0
        ):
            raise ConfigurationError(f"ScaledResNet: numeric scaling must be > 0, got {scaling!r}")
        if init not in _INITS:
            raise ConfigurationError(f"ScaledResNet: unknown init '{init}'; use one of {', '.join(_INITS)}")
        if init == "paired" and (width % 2 or head_width % 2):
            raise ConfigurationError(f"ScaledResNet: init='paired' needs even width and head_width, "
                                     f"got {width} and {head_width}")
        self.act: ActivationSpec = get_activation(activation)
        p = d if input_dim is None else input_dim
        if isinstance(p, bool) or not isinstance(p, int) or p < 1:
            raise ConfigurationError(f"ScaledResNet: input_dim must be an integer >= 1, got {input_dim!r}")
        self.config = ResNetConfig(d, depth, width, head_width, scaling, float(alpha),
                                   float(beta), activation, init, p, seed)
        self.prior = PriorSpec(
            sigma_u=math.sqrt(width) if init == "standard" else 1.0,
            sigma_w=1.0 / math.sqrt(d),
            sigma_b=1.0,
            sigma_a=math.sqrt(head_width) if init == "standard" else 1.0,
            sigma_head_w=1.0 / math.sqrt(d),
        )
        gen = torch.Generator().manual_seed(seed)

        def draw(*shape: int, std: float) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=gen, dtype=dtype) * std)

        pr = self.prior
        self.res_u = draw(depth, width, d, std=pr.sigma_u)
        self.res_w = draw(depth, width, d, std=pr.sigma_w)
        self.res_bias = draw(depth, width, std=pr.sigma_b)
        self.head_a = draw(head_width, std=pr.sigma_a)
        self.head_w = draw(head_width, d, std=pr.sigma_head_w)
        if init == "paired":
            with torch.no_grad():
                h, k = width // 2, head_width // 2
                self.res_u[:, h:] = -self.res_u[:, :h]
                self.res_w[:, h:] = self.res_w[:, :h]
                self.res_bias[:, h:] = self.res_bias[:, :h]
                self.head_a[k:] = -self.head_a[:k]
                self.head_w[k:] = self.head_w[:k]
        if p == d:
            embed = torch.eye(d, dtype=dtype)
        else:
            embed = torch.randn(d, p, generator=gen, dtype=dtype) / math.sqrt(p)
        self.register_buffer("embed", embed)

    # ----------------------------------------------------------------- scalings
    @property
    def residual_multiplier(self) -> float:
        """c_L, the factor in front of each block's particle average (dimensionless)."""
        c, L = self.config.scaling, self.config.depth
        if c == "mean-field":
            return self.config.alpha / L
        if c == "sqrt":
            return self.config.alpha / math.sqrt(L)
        if c == "none":
            return 1.0
        return float(c)

    @property
    def declared_depth_exponent(self) -> float | None:
        """gamma in c_L = alpha * L^-gamma when the scaling is named; None for a number."""
        return {"mean-field": 1.0, "sqrt": 0.5, "none": 0.0}.get(str(self.config.scaling))

    def lr_multipliers(self) -> dict[str, float]:
        """Per-parameter step multipliers of mean-field gradient descent.

        Head particles: K. Residual particles: M * alpha^2 / (L * c_L^2), which is the
        mean-field L*M when c_L = alpha/L and, for other scalings, keeps the residual
        branch's function-space speed equal to that of the mean-field network (so every
        scaling trains at a comparable rate and differs in how far particles move).
        """
        cfg = self.config
        c = self.residual_multiplier
        res = cfg.width * cfg.alpha**2 / (cfg.depth * c * c)
        head = float(cfg.head_width)
        return {"res_u": res, "res_w": res, "res_bias": res, "head_a": head, "head_w": head}

    # ----------------------------------------------------------------- forward
    def embed_input(self, x: Tensor) -> Tensor:
        """z_0 = x E^T, shape (n, d)."""
        if x.dim() != 2 or x.shape[1] != self.config.input_dim:
            raise ConfigurationError(
                f"ScaledResNet expects inputs of shape (n, {self.config.input_dim}), "
                f"got {tuple(x.shape)}"
            )
        embed: Tensor = self.embed  # type: ignore[assignment]
        return x.to(embed.dtype) @ embed.T

    def block(self, z: Tensor, layer: int) -> Tensor:
        """One residual block: z + (c_L/M) s(z w^T + b) u, shapes (n, d) -> (n, d)."""
        h = z @ self.res_w[layer].T + self.res_bias[layer]
        scale = self.residual_multiplier / self.config.width
        return z + scale * (self.act.fn(h) @ self.res_u[layer])

    def head(self, z: Tensor) -> Tensor:
        """f = (beta/K) s(z w'^T) a, shape (n, d) -> (n,)."""
        return (self.config.beta / self.config.head_width) * (self.act.fn(z @ self.head_w.T) @ self.head_a)

    def forward_states(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Return f(x) of shape (n,) and the residual stream [z_0, ..., z_L], each (n, d)."""
        z = self.embed_input(x)
        states = [z]
        for layer in range(self.config.depth):
            z = self.block(z, layer)
            states.append(z)
        return self.head(z), states

    def forward(self, x: Tensor) -> Tensor:
        z = self.embed_input(x)
        for layer in range(self.config.depth):
            z = self.block(z, layer)
        return self.head(z)

    # ----------------------------------------------------------------- particles
    @staticmethod
    def residual_parameter_names() -> tuple[str, ...]:
        return ("res_u", "res_w", "res_bias")

    @staticmethod
    def head_parameter_names() -> tuple[str, ...]:
        return ("head_a", "head_w")

    def particles(self) -> Particles:
        """The current particles as float64 arrays (copies); see :class:`Particles`."""
        with torch.no_grad():
            res = torch.cat(
                [self.res_u, self.res_w, self.res_bias.unsqueeze(-1)], dim=-1
            ).to(torch.float64)
            head = torch.cat([self.head_a.unsqueeze(-1), self.head_w], dim=-1).to(torch.float64)
        return Particles(res.cpu().numpy().copy(), head.cpu().numpy().copy())

    def extra_repr(self) -> str:
        c = self.config
        return (f"d={c.d}, depth={c.depth}, width={c.width}, head_width={c.head_width}, "
                f"scaling={c.scaling!r}, alpha={c.alpha}, beta={c.beta}, "
                f"activation={c.activation!r}, init={c.init!r}")


def particles_from_state(state: dict[str, Tensor]) -> Particles:
    """Particles of a ScaledResNet state dict (as stored in a training checkpoint)."""
    res = torch.cat([state["res_u"], state["res_w"], state["res_bias"].unsqueeze(-1)], dim=-1)
    head = torch.cat([state["head_a"].unsqueeze(-1), state["head_w"]], dim=-1)
    return Particles(
        res.detach().to(torch.float64).cpu().numpy().copy(),
        head.detach().to(torch.float64).cpu().numpy().copy(),
    )
