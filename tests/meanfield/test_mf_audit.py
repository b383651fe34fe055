"""Regime labels for constructed cases of each regime (ScaledResNet and user networks)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from certcompress import meanfield as mf
from certcompress.errors import ConfigurationError, UnsupportedModelError

L, M, D, K = 16, 256, 8, 64


@pytest.mark.parametrize(
    ("scaling", "init", "regime"),
    [("mean-field", "mean-field", "mean-field"), ("mean-field", "standard", "large-scale"),
     ("sqrt", "mean-field", "SDE"), ("none", "mean-field", "unstable"),
     (1.0 / L**2, "mean-field", "mean-field"), (2.0, "mean-field", "unstable")],
)
def test_scaled_resnet_regimes(scaling, init, regime):
    net = mf.ScaledResNet(D, L, M, K, scaling, alpha=1.5, init=init, seed=1)
    rep = mf.audit(net)
    assert rep.regime == regime
    assert rep.in_scope == (regime == "mean-field")
    assert rep.depth == L and rep.width == M and rep.head_width == K
    c = net.residual_multiplier
    # alpha_eff = c_L * L * rho with rho ~ 1 (mean-field init) or ~ sqrt(M) (standard)
    rho = math.sqrt(M) if init == "standard" else 1.0
    assert rep.alpha_eff == pytest.approx(c * L * rho, rel=0.1)
    assert rep.beta_eff == pytest.approx(math.sqrt(K) if init == "standard" else 1.0, rel=0.2)
    if not rep.in_scope:
        with pytest.raises(UnsupportedModelError, match="outside the mean-field theorem"):
            rep.raise_if_out_of_scope()
    else:
        rep.raise_if_out_of_scope()


def test_relu_scaled_resnet_is_mean_field_but_out_of_scope():
    rep = mf.audit(mf.ScaledResNet(D, 4, 16, 16, activation="relu"))
    assert rep.regime == "mean-field" and not rep.in_scope
    assert any("relu" in r for r in rep.reasons)


class _Block(nn.Module):
    def __init__(self, c: float, act: type[nn.Module], mean_field_init: bool) -> None:
        super().__init__()
        self.W = nn.Linear(D, M)
        self.V = nn.Linear(M, D)
        self.act = act()
        self.c = c
        if mean_field_init:  # particles O(1): V = u / M, w ~ N(0, I/d)
            nn.init.normal_(self.W.weight, std=D**-0.5)
            nn.init.normal_(self.V.weight, std=1.0 / M)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.c * self.V(self.act(self.W(z)))


class _UserNet(nn.Module):
    def __init__(self, c: float, act: type[nn.Module] = nn.Tanh, mean_field_init: bool = True,
                 hidden_head: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(c, act, mean_field_init) for _ in range(L)])
        self.hidden_head = hidden_head
        self.h1 = nn.Linear(D, K)
        self.h2 = nn.Linear(K if hidden_head else D, 1)
        if mean_field_init:
            nn.init.normal_(self.h1.weight, std=D**-0.5)
            nn.init.normal_(self.h2.weight, std=1.0 / K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.hidden_head:
            return self.h2(torch.tanh(self.h1(x)))
        return self.h2(x)


@pytest.mark.parametrize(
    ("c", "mean_field_init", "regime", "alpha_eff"),
    [(1.0 / L, True, "mean-field", 1.0), (1.0 / L, False, "large-scale", math.sqrt(M)),
     (L**-0.5, True, "mean-field", math.sqrt(L)), (1.0, False, "unstable", L * math.sqrt(M))],
)
def test_user_network_regimes(c, mean_field_init, regime, alpha_eff):
    torch.manual_seed(0)
    net = _UserNet(c, mean_field_init=mean_field_init)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rep = mf.audit(net)
    assert rep.regime == regime
    assert rep.depth == L and rep.width == M and rep.hidden_dim == D
    assert rep.alpha_eff == pytest.approx(alpha_eff, rel=0.15)
    assert rep.depth_exponent_source == "not identifiable from one depth"
    assert math.isnan(rep.depth_exponent)  # one depth: c = alpha_eff / L, labelled by alpha_eff
    assert rep.in_scope == (regime == "mean-field")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # not mutated


def test_user_network_relu_and_linear_head_are_out_of_scope():
    torch.manual_seed(0)
    rep = mf.audit(_UserNet(1.0 / L, act=nn.ReLU))
    assert rep.regime == "mean-field" and not rep.in_scope
    assert any("relu" in r for r in rep.reasons)
    rep = mf.audit(_UserNet(1.0 / L, hidden_head=False))
    assert rep.beta_eff is None and not rep.in_scope


def test_depth_exponent_argument_overrides_inference():
    torch.manual_seed(0)
    net = _UserNet(1.0)  # scale folded nowhere: alpha_eff = L = 16 at one depth
    assert mf.audit(net).regime == "unstable"
    rep = mf.audit(net, depth_exponent=1.0)  # then c = 16 / L: a mean-field scaling, alpha 16
    assert rep.regime == "large-scale" and rep.depth_exponent_source == "argument"
    assert rep.depth_constant == pytest.approx(L, rel=0.15) and not rep.in_scope


def test_network_without_residual_blocks_is_rejected_with_reasons():
    with pytest.raises(UnsupportedModelError, match="no residual block"):
        mf.audit(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)))
    with pytest.raises(ConfigurationError, match="torch.nn.Module"):
        mf.audit("not a model")  # type: ignore[arg-type]


class _ConvBlock(nn.Module):
    """branch + shortcut(z) with the branch first and a projection shortcut."""

    def __init__(self, cin: int, cout: int, c: float) -> None:
        super().__init__()
        self.W = nn.Conv2d(cin, cout, 3, padding=1)
        self.V = nn.Conv2d(cout, cout, 3, padding=1)
        self.short = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        self.c = c

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.V(torch.tanh(self.W(z))) * self.c + self.short(z)


def test_convolutional_resnet_gets_a_label_and_is_out_of_scope():
    torch.manual_seed(0)
    net = nn.Sequential(_ConvBlock(3, 8, 1.0 / 4), _ConvBlock(8, 8, 1.0 / 4),
                        _ConvBlock(8, 8, 1.0 / 4), _ConvBlock(8, 8, 1.0 / 4))
    rep = mf.audit(net)
    assert rep.depth == 4 and rep.regime == "large-scale"  # c = 1/L, PyTorch's default init
    assert [b.gain for b in rep.blocks] == [0.25] * 4
    assert rep.blocks[0].width == 8 * 9 and rep.blocks[0].hidden_dim == 3 * 9  # fan-ins
    assert not rep.in_scope and any("convolutional blocks (4" in r for r in rep.reasons)


def test_torchvision_resnet_is_audited_not_rejected():
    import torchvision

    rep = mf.audit(torchvision.models.resnet18(weights=None))
    assert rep.depth == 8 and rep.regime == "unstable" and not rep.in_scope
    assert rep.beta_eff is None and math.isfinite(rep.alpha_eff)
    assert any("BatchNorm2d" in r for r in rep.reasons)
    assert any("relu" in r for r in rep.reasons)


# ---------------------------------------------------------------- issue 18 mislabel cases
_DEPTHS = (2, 4, 8, 16, 64)


@pytest.mark.parametrize("a", [0.5, 1.0, 2.0, 4.0])
def test_c_equal_a_over_L_is_mean_field_at_every_depth_with_any_constant(a):
    nets = [mf.ScaledResNet(4, depth, 64, 8, a / depth, seed=depth) for depth in _DEPTHS]
    for i, net in enumerate(nets):
        single = mf.audit(net)  # one depth: read as c = alpha_eff / L
        assert single.regime == "mean-field", (a, net.config.depth, single.summary())
        assert single.alpha_eff == pytest.approx(a, rel=0.25)
        fitted = mf.audit(net, family=nets[:i] + nets[i + 1:])
        assert fitted.regime == "mean-field" and fitted.in_scope
        assert fitted.depth_exponent == pytest.approx(1.0, abs=0.1)
        assert fitted.depth_constant == pytest.approx(a, rel=0.25)
        assert any("fitted over depths [2, 4, 8, 16, 64]" in e for e in fitted.evidence)


@pytest.mark.parametrize(("power", "regime"), [(0.5, "SDE"), (0.0, "unstable")])
def test_fitted_exponent_labels_sde_and_unstable_families(power, regime):
    nets = [mf.ScaledResNet(4, depth, 64, 8, 1.5 / depth**power, seed=depth) for depth in _DEPTHS]
    rep = mf.audit(nets[2], family=nets[:2] + nets[3:])
    assert rep.regime == regime and not rep.in_scope
    assert rep.depth_exponent == pytest.approx(power, abs=0.1)


class _FoldedNet(nn.Module):
    """c = 1 in the code, the 1/L folded into V (mean-field particles otherwise)."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([_Block(1.0, nn.Tanh, True) for _ in range(depth)])
        with torch.no_grad():
            for b in self.blocks:
                b.V.weight.mul_(1.0 / depth)
        self.h1 = nn.Linear(D, K)
        self.h2 = nn.Linear(K, 1)
        nn.init.normal_(self.h1.weight, std=D**-0.5)
        nn.init.normal_(self.h2.weight, std=1.0 / K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.h2(torch.tanh(self.h1(x)))


def test_scaling_folded_into_the_weights_is_mean_field():
    torch.manual_seed(0)
    rep = mf.audit(_FoldedNet(L))
    assert rep.regime == "mean-field" and rep.in_scope, rep.summary()
    assert rep.alpha_eff == pytest.approx(1.0, rel=0.1)
    assert all(b.gain == 1.0 for b in rep.blocks)  # no explicit multiplier: all in rho
    fam = [_FoldedNet(depth) for depth in (4, 8, 32)]
    rep = mf.audit(fam[0], family=fam[1:])
    assert rep.depth_exponent == pytest.approx(1.0, abs=0.1) and rep.regime == "mean-field"


@pytest.fixture(scope="module")
def small_task():
    d = mf.load_digits_task("3-vs-8", n_train=40, n_test=20, seed=0)
    return d.X_train, d.y_train


@pytest.mark.parametrize(("beta", "regime"), [(1.0, "mean-field"), (30.0, "lazy"), (1000.0, "lazy")])
def test_beta_laziness_is_measured_under_training(small_task, beta, regime):
    net = mf.ScaledResNet(8, 2, 16, 16, beta=beta, init="paired", input_dim=64, seed=0)
    unmeasured = mf.audit(net)
    assert unmeasured.regime == ("mean-field" if beta <= mf.BETA_LARGE else "large-scale")
    rep = mf.audit(net, data=small_task, steps=100)
    lz = rep.laziness
    assert lz is not None and rep.regime == regime, rep.summary()
    assert lz.lazy == (max(lz.move_head, lz.move_residual) < mf.LAZY_MOVE
                       and lz.gram_change < mf.LAZY_GRAM and lz.loss_ratio <= 0.5)
    assert rep.in_scope == (regime == "mean-field")
    assert any("measured under training" in e for e in rep.evidence)


def test_large_beta_without_pairing_is_not_called_mean_field(small_task):
    # i.i.d. particles: f(0) ~ beta / sqrt(K), so beta = 1000 is a large-scale network
    rep = mf.audit(mf.ScaledResNet(8, 2, 16, 16, beta=1000.0, input_dim=64), data=small_task, steps=100)
    assert rep.regime in ("lazy", "large-scale") and not rep.in_scope
    assert (rep.regime == "lazy") == rep.laziness.lazy


@pytest.mark.parametrize("init", ["standard", "mean-field"])
def test_standard_vs_mean_field_init_trained(small_task, init):
    net = mf.ScaledResNet(8, 2, 16, 16, init=init, input_dim=64, seed=0)
    rep = mf.audit(net, data=small_task, steps=100)
    lz = rep.laziness
    if init == "standard":
        # not lazy under the module's own training: the particles move and G2 changes
        assert rep.regime == "large-scale" and not lz.lazy and not rep.in_scope
        assert lz.gram_change > mf.LAZY_GRAM
        assert any("not lazy" in e for e in rep.evidence)
    else:
        assert rep.regime == "mean-field" and rep.in_scope and not lz.lazy
