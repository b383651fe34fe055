"""estimate(): every quantity of docs/meanfield.md for one training run, with its status.

Tags as in docs/meanfield.md: [P] proven in the papers (asymptotically, no explicit
constants), [D] derived here with standard mean-field calculus, [E] an estimate with
stated assumptions, [M] measured. Nothing here is a certificate.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigurationError
from ._audit import audit, laziness, with_laziness
from ._data import as_features, as_targets
from ._gram import gram_matrices, gram_traces, lambda_min
from ._kl import KLEstimate, gaussian_kl, knn_kl
from ._loo import flow_ridge, kernel_ridge_loo
from ._model import Particles, ScaledResNet, particles_from_state
from ._paper import limit_head_grams, paper_bounds
from ._rademacher import rademacher_closed_form, rademacher_monte_carlo
from ._train import TrainRun, data_fingerprint, progress_enabled
from ._transport import w2_coupling_bound
from ._types import CovarianceMode, GramMethod

__all__ = ["EstimateOptions", "GramPoint", "PhaseRate", "MeanFieldEstimate", "estimate",
           "ESTIMATE_COLUMNS"]


@dataclass(frozen=True)
class EstimateOptions:
    """Knobs of :func:`estimate` (defaults suit n <= 2000, L*M <= 10^4).

    gram_method: "structured" (closed form, fast) or "jacobian" (torch.func).
    max_checkpoints: Gram matrices are computed on at most this many checkpoints,
        evenly spread, first and last included.
    knn_k, knn_repeats: k of the k-NN KL estimator and its calibration draws.
    covariance: Gaussian KL fit ("auto": full when M >= 10 * dim, else diagonal).
    bootstrap: resamples for the Gaussian KL standard error.
    mc_particles, mc_signs: prior draws and sign vectors of the Monte-Carlo
        Donsker-Varadhan Rademacher estimate.
    target_bound: Y with |y| <= Y for the clipped loss; default max |y| over the data.
    eig_floor: relative eigenvalue floor for G2^{-1} in the kernel measure.
    hermite_order: truncation order of the Hermite lower bound Lambda (higher: tighter).
    """

    gram_method: GramMethod = "structured"
    max_checkpoints: int = 12
    knn_k: int = 3
    knn_repeats: int = 4
    covariance: CovarianceMode = "auto"
    bootstrap: int = 32
    mc_particles: int = 2048
    mc_signs: int = 64
    target_bound: float | None = None
    eig_floor: float = 1e-12
    hermite_order: int = 12

    def __post_init__(self) -> None:
        for name in ("max_checkpoints", "knn_k", "knn_repeats", "mc_particles", "mc_signs",
                     "hermite_order"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "max_checkpoints" else 1):
                raise ConfigurationError(f"EstimateOptions.{name} must be a positive integer "
                                         f"(>= 2 for max_checkpoints), got {value!r}")
        if self.gram_method not in ("structured", "jacobian"):
            raise ConfigurationError(f"EstimateOptions.gram_method must be 'structured' or 'jacobian', got {self.gram_method!r}")
        if self.covariance not in ("auto", "full", "diagonal"):
            raise ConfigurationError(f"EstimateOptions.covariance must be 'auto', 'full' or 'diagonal', got {self.covariance!r}")
        if self.bootstrap < 0:
            raise ConfigurationError(f"EstimateOptions.bootstrap must be >= 0, got {self.bootstrap}")
        if self.target_bound is not None and not (math.isfinite(self.target_bound) and self.target_bound > 0):
            raise ConfigurationError(f"EstimateOptions.target_bound must be > 0, got {self.target_bound}")
        if not 0 <= self.eig_floor < 1:
            raise ConfigurationError(f"EstimateOptions.eig_floor must be in [0, 1), got {self.eig_floor}")


@dataclass(frozen=True)
class GramPoint:
    """lambda_min of G2 and of G1 + G2 at one checkpoint (training step, flow time, loss),
    and the trajectory KL estimate there [E]: ``kl_gaussian`` (bias-corrected Gaussian fit),
    ``kl_knn`` (k-NN, its bias calibrated on resampled initialisations of the same size:
    about 0 on untrained particles) and ``kl_radius`` (the larger of the two per part:
    head + mean over blocks, as the final ``kl_radius``), all in nats."""

    step: int
    time: float
    loss: float
    lambda_min_G2: float
    lambda_min_G12: float
    kl_gaussian: float = math.nan
    kl_knn: float = math.nan
    kl_radius: float = math.nan


@dataclass(frozen=True)
class PhaseRate:
    """Loss decay over one phase [t_start, t_end] of flow time (between two Gram checkpoints).

    ``measured`` = -log(L(t_end) / L(t_start)) / (t_end - t_start) [M];
    ``predicted`` = (2 beta^2 / n) * mean over the phase of lambda_min of the Gram matrix
    that drives the run (G1 + G2; G2 alone for a head-only run), trapezoid rule [D]:
    under gradient flow dL/dt <= -(2 beta^2/n) lambda_min L, so measured >= predicted up
    to the discretisation of the flow and of the mean. ``predicted_G2`` uses G2 alone
    (the paper's envelope exp(-(2 beta^2/n) int lambda_min(G2))).
    """

    t_start: float
    t_end: float
    loss_start: float
    loss_end: float
    measured: float
    predicted: float
    predicted_G2: float


@dataclass(frozen=True)
class MeanFieldEstimate:
    """Everything :func:`estimate` computes for one run. Losses are per sample, in the
    units of (1/2)(f - y)^2; KL in nats; W2 in parameter units; eigenvalues of the O(1)
    Gram matrices G1, G2 (see certcompress.meanfield._gram). ``None`` means "out of
    scope": the theory gives that number no meaning here (``scope`` says why).

    Configuration: depth L, width M, head_width K, d, scaling, alpha, beta, activation,
    init, n_train, n_test, delta.
    Regime [D]: regime, alpha_eff, beta_eff, in_scope, scope; laziness [M] of this run:
        move_head, move_residual (rms particle displacement / rms particle scale),
        gram_change (relative Frobenius change of G2), lazy_measured (see mf.audit).
    Gram [D, M]: lambda_min_G2_init/final/min, lambda_min_G12_init/final (G12 = G1 + G2),
        trajectory, premise_holds (lambda_min(G2(t)) >= lambda_min(G2(0)) / 2 throughout).
    Loss decay [D, M]: loss_decay_holds (L(t) <= exp(-(2 beta^2/n) int lambda_min(G2)) L(0)
        at every checkpoint), decay_rate_fitted (-slope of log L over flow time),
        decay_rate_predicted_G2, decay_rate_predicted_G12.
    Distance from init: w2_bound_residual, w2_bound_head, w2_bound_per_layer [P: upper
        bounds on W2 of the particle sets]; kl_gaussian_* (population floor [D], finite
        sample [E], bias-corrected: ~0 on particles of nu_0), kl_knn_* [E] with kl_knn_stderr, kl_knn_baseline (the k-NN value on
        the initial particles: its noise level); kl_radius = head + mean over layers of
        max(Gaussian floor, k-NN) [E].
    Complexity and gap [E]: rademacher_closed_form, rademacher_mc (+ stderr),
        loss_lipschitz = 2Y, loss_bound = 2Y^2 for the loss clipped to |f| <= Y,
        confidence_term = 3 B sqrt(log(2/delta)/(2n)), gap_estimate (with rademacher_mc),
        gap_estimate_closed_form, gap_estimate_vacuous (True when gap_estimate >=
        loss_bound: the clipped loss lies in [0, B], so no gap exceeds B and the
        estimate says nothing), kernel_measure = sqrt(y^T G2(0)^{-1} y / n).
    Measured [M]: train/test loss of clipped predictions and measured_gap (test - train),
        the same unclipped, and 0-1 errors (None for non-binary targets).
    The paper's quantities [D] (certcompress.meanfield._paper; always computed, also out
        of scope, since they concern the limit at mean-field initialisation):
        Lambda_s, Lambda_G2 (lower bounds on lambda_min of the limiting Gram matrices on
        the embedded data), kl_bound_paper (KL bound at the final flow time as a
        function of beta, n, Lambda_s, t), rademacher_paper and gap_bound_paper (+
        gap_bound_paper_vacuous) for the frozen-feature head class.
    rademacher_sqrt_kl [E]: beta sigma_a sqrt(2 r / n), the small-radius form of the
        DV Rademacher bound at the estimated radius r (in scope only; here r is not small
        against 1, so it is an estimate of the rate, not a bound).
    Tangent complexity [D for the tangent class, E for the network] (docs/meanfield.md,
        "Tangent complexity"): jacobian_trace_head = max over Gram checkpoints of
        tr(G2)/n, jacobian_trace_residual = sum over blocks of the max of tr(G1^(l))/n;
        rademacher_tangent_head = beta W2_head sqrt(jacobian_trace_head) / sqrt(n),
        rademacher_tangent_residual = sum_l beta W2_l sqrt(M tr(G1^(l))/(n m_res)) / sqrt(n),
        rademacher_tangent (their sum: the Rademacher complexity of the linearised class
        whose per-layer particle movement is at most the measured one);
        gap_estimate_tangent = 2 Lip rademacher_tangent + confidence_term;
        gap_estimate_optimistic = sqrt(train_loss) rho + rho^2 with
        rho = rademacher_tangent + sqrt(B log(1/delta) / n) (the optimistic-rate form for the
        1-smooth squared loss, universal constant and log factors set to 1);
        gap_estimate_stability = (4 beta^2/n) int_0^T (tr G(t)/n) L(t) dt (the uniform-
        stability bound of gradient descent with the squared gradient norm of the loss,
        2 l_i beta^2 G_ii, in place of Lip^2; convexity assumed, not checked). All four are
        computed in and out of scope (they do not rest on the mean-field limit).
    Leave-one-out [D for kernel ridge, E for the network] (docs/meanfield.md,
        "Leave-one-out estimate"): loo_ridge = n / (beta^2 t) (gradient flow for the
        run's flow time t as a ridge); loo_loss = the exact leave-one-out clipped loss of
        kernel ridge regression with the network's tangent kernel AT INITIALISATION
        (G1 + G2; G2 for a head-only run), offset f_0; gap_estimate_loo = loo_loss -
        train_loss; loo_loss_limit and gap_estimate_loo_limit: the same with the
        limiting head Gram matrix G2inf at mean-field initialisation (Hermite series at
        hermite_order, offset 0), which depends on the data, labels, beta and t only.
        Computed in and out of scope; NaN when t = 0.
    Per-phase decay [M, D]: phase_rates (one :class:`PhaseRate` per interval between
        Gram checkpoints), decay_rate_late_measured / decay_rate_late_predicted (the last
        phase); trainable ("all" or "head": the frozen-features ablation).
    Trajectory: GramPoint per Gram checkpoint, with kl_gaussian, the bias-corrected
        Gaussian-fit KL (head + mean over blocks) of the particles there [E].
    The theorem's conditions, checked on this run: beta_over_sqrt_n and cond_beta
        (beta >= sqrt(n)), kl_radius_times_n and cond_kl (estimated KL radius <= 1/n),
        t0_measured (first checkpoint time with lambda_min(G1+G2) < Lambda_G2 / 2; inf
        if none), train_time and cond_time (train_time <= t0_measured), and
        conditions_met (all three).
    """

    depth: int
    width: int
    head_width: int
    d: int
    scaling: str
    alpha: float
    beta: float
    activation: str
    init: str
    n_train: int
    n_test: int
    delta: float
    regime: str
    alpha_eff: float
    beta_eff: float
    in_scope: bool
    scope: str
    move_head: float
    move_residual: float
    gram_change: float
    lazy_measured: bool
    lambda_min_G2_init: float
    lambda_min_G2_final: float
    lambda_min_G2_min: float
    lambda_min_G12_init: float
    lambda_min_G12_final: float
    premise_holds: bool
    loss_init: float
    loss_final: float
    loss_decay_bound_final: float
    loss_decay_holds: bool
    decay_rate_fitted: float
    decay_rate_predicted_G2: float
    decay_rate_predicted_G12: float
    w2_bound_residual: float
    w2_bound_head: float
    kl_gaussian_residual: float
    kl_gaussian_head: float
    kl_knn_residual: float
    kl_knn_head: float
    kl_knn_stderr: float
    kl_knn_baseline: float
    kl_radius: float
    rademacher_closed_form: float | None
    rademacher_mc: float | None
    rademacher_mc_stderr: float | None
    loss_lipschitz: float
    loss_bound: float
    confidence_term: float
    gap_estimate: float | None
    gap_estimate_closed_form: float | None
    gap_estimate_vacuous: bool | None
    kernel_measure: float
    train_loss: float
    test_loss: float
    measured_gap: float
    train_loss_unclipped: float
    test_loss_unclipped: float
    measured_gap_unclipped: float
    train_error: float | None
    test_error: float | None
    diverged: bool
    steps: int
    estimate_seconds: float
    Lambda_s: float
    Lambda_G2: float
    kl_bound_paper: float
    rademacher_paper: float
    gap_bound_paper: float
    gap_bound_paper_vacuous: bool
    beta_over_sqrt_n: float
    cond_beta: bool
    kl_radius_times_n: float
    cond_kl: bool
    t0_measured: float
    train_time: float
    cond_time: bool
    conditions_met: bool
    trainable: str = "all"
    decay_rate_late_measured: float = math.nan
    decay_rate_late_predicted: float = math.nan
    rademacher_sqrt_kl: float | None = None
    jacobian_trace_head: float = math.nan
    jacobian_trace_residual: float = math.nan
    rademacher_tangent_head: float = math.nan
    rademacher_tangent_residual: float = math.nan
    rademacher_tangent: float = math.nan
    gap_estimate_tangent: float = math.nan
    gap_estimate_optimistic: float = math.nan
    gap_estimate_stability: float = math.nan
    loo_ridge: float = math.nan
    loo_loss: float = math.nan
    loo_loss_limit: float = math.nan
    gap_estimate_loo: float = math.nan
    gap_estimate_loo_limit: float = math.nan
    trajectory: tuple[GramPoint, ...] = ()
    phase_rates: tuple[PhaseRate, ...] = ()
    w2_bound_per_layer: tuple[float, ...] = ()
    kl_gaussian_per_layer: tuple[float, ...] = ()
    kl_knn_per_layer: tuple[float, ...] = ()
    notes: tuple[str, ...] = ()

    def as_row(self) -> dict[str, object]:
        """The scalar fields as a flat dict (one table row); tuples are left out."""
        return {k: v for k, v in asdict(self).items() if not isinstance(v, tuple | list)}

    def summary(self) -> str:
        """A short human-readable report."""
        def fmt(v: float | None) -> str:
            return "out of scope" if v is None else f"{v:.4g}"

        def ok(flag: bool) -> str:
            return "pass" if flag else "FAIL"

        return "\n".join([
            f"ScaledResNet L={self.depth} M={self.width} K={self.head_width} scaling={self.scaling} "
            f"alpha={self.alpha} beta={self.beta} ({self.activation}, {self.init} init), n={self.n_train}",
            f"  regime [D]: {self.regime}, alpha_eff={self.alpha_eff:.4g}, beta_eff={self.beta_eff:.4g} -- {self.scope}",
            f"  [D] Lambda (lower bounds on lambda_min of the limiting Gram): K_s {self.Lambda_s:.4g}, "
            f"G2 {self.Lambda_G2:.4g}; KL bound at t={self.train_time:.4g}: {self.kl_bound_paper:.4g} nats; "
            f"Rademacher {self.rademacher_paper:.4g}; gap bound {self.gap_bound_paper:.4g}"
            + (" VACUOUS" if self.gap_bound_paper_vacuous else ""),
            f"  conditions: beta >= sqrt(n) {ok(self.cond_beta)} (beta/sqrt(n) = {self.beta_over_sqrt_n:.3g}); "
            f"KL radius <= 1/n {ok(self.cond_kl)} (r*n = {self.kl_radius_times_n:.3g}); "
            f"t <= t0 {ok(self.cond_time)} (t0 = {self.t0_measured:.4g})",
            f"  [M] lambda_min(G2): init {self.lambda_min_G2_init:.4g}, final {self.lambda_min_G2_final:.4g}, "
            f"min {self.lambda_min_G2_min:.4g}; premise {'holds' if self.premise_holds else 'FAILED'}",
            f"  [M] lambda_min(G1+G2): init {self.lambda_min_G12_init:.4g}, final {self.lambda_min_G12_final:.4g}",
            f"  [M/D] loss decay: fitted rate {self.decay_rate_fitted:.4g}, predicted (G2) "
            f"{self.decay_rate_predicted_G2:.4g}, bound {'holds' if self.loss_decay_holds else 'VIOLATED'}",
            "  [M/D] per-phase decay rate, measured vs predicted (2 beta^2/n) mean lambda_min"
            + (" (G2: head only)" if self.trainable == "head" else " (G1+G2)") + ": "
            + (", ".join(f"t {p.t_start:.3g}-{p.t_end:.3g}: {p.measured:.3g} vs {p.predicted:.3g}"
                         for p in self.phase_rates) or "n/a"),
            f"  [D] W2 coupling bound: residual {self.w2_bound_residual:.4g}, head {self.w2_bound_head:.4g}",
            f"  [E] KL (nats): Gaussian fit (bias-corrected) residual {self.kl_gaussian_residual:.4g} head {self.kl_gaussian_head:.4g}; "
            f"kNN residual {self.kl_knn_residual:.4g} head {self.kl_knn_head:.4g} (+-{self.kl_knn_stderr:.2g}, "
            f"baseline {self.kl_knn_baseline:.3g}); radius r={self.kl_radius:.4g}",
            f"  [E] Rademacher at the estimated radius: closed form {fmt(self.rademacher_closed_form)}, Monte-Carlo DV {fmt(self.rademacher_mc)}",
            f"  [E] gap estimate {fmt(self.gap_estimate)} (closed form {fmt(self.gap_estimate_closed_form)})"
            + (f" VACUOUS (the loss lies in [0, {self.loss_bound:.3g}])" if self.gap_estimate_vacuous else "")
            + f", kernel measure {self.kernel_measure:.4g}",
            f"  [E] leave-one-out (kernel ridge, ridge n/(beta^2 t) = {self.loo_ridge:.4g}): gap estimate "
            f"{self.gap_estimate_loo:.4g} with the tangent kernel at init (LOO loss {self.loo_loss:.4g}), "
            f"{self.gap_estimate_loo_limit:.4g} with the limit's head kernel",
            f"  [M] MEASURED gap {self.measured_gap:.4g} (train {self.train_loss:.4g}, test {self.test_loss:.4g})",
        ])


ESTIMATE_COLUMNS: tuple[str, ...] = tuple(
    f.name for f in fields(MeanFieldEstimate) if not f.name.startswith(("trajectory", "notes", "phase_rates"))
    and not f.name.endswith("per_layer")
)


def _select(n: int, k: int) -> list[int]:
    if n <= k:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})


def _load(model: ScaledResNet, state: dict[str, torch.Tensor] | object) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(state[name])  # type: ignore[index]


def _kl_pair(samples: np.ndarray, std: np.ndarray, opts: EstimateOptions, seed: int) -> tuple[KLEstimate, KLEstimate]:
    if samples.shape[0] < 3:
        na = KLEstimate(math.nan, math.nan, "none", samples.shape[0], samples.shape[1],
                        "fewer than 3 particles: no KL estimate")
        return na, na
    g = gaussian_kl(samples, std, covariance=opts.covariance, bootstrap=opts.bootstrap, seed=seed)
    k = knn_kl(samples, std, k=min(opts.knn_k, samples.shape[0] - 1), repeats=opts.knn_repeats, seed=seed)
    return g, k


def _kl_trajectory(p: Particles, res_std: np.ndarray, head_std: np.ndarray,
                   opts: EstimateOptions, seed: int) -> tuple[float, float, float]:
    """(Gaussian floor, k-NN, radius) of one checkpoint's particles: head + mean over
    blocks; NaN with fewer than 3 particles."""
    if p.head.shape[0] < 3 or p.residual.shape[1] < 3:
        return math.nan, math.nan, math.nan
    parts = [p.head] + [p.residual[i] for i in range(p.residual.shape[0])]
    stds = [head_std] + [res_std] * p.residual.shape[0]
    g = np.array([gaussian_kl(x, sd, covariance="diagonal", bootstrap=0).value
                  for x, sd in zip(parts, stds, strict=True)])
    k = np.array([knn_kl(x, sd, k=min(opts.knn_k, x.shape[0] - 1), repeats=opts.knn_repeats,
                         seed=seed + i).value for i, (x, sd) in enumerate(zip(parts, stds, strict=True))])
    both = np.maximum(g, k)
    return (float(g[0] + g[1:].mean()), float(k[0] + k[1:].mean()),
            float(both[0] + both[1:].mean()))


def _phase_rates(traj: list[GramPoint], beta2: float, n: int, head_only: bool) -> list[PhaseRate]:
    out = []
    for a, b in zip(traj[:-1], traj[1:], strict=True):
        dt = b.time - a.time
        if not (dt > 0 and a.loss > 0 and b.loss > 0):
            continue
        lam_a = a.lambda_min_G2 if head_only else a.lambda_min_G12
        lam_b = b.lambda_min_G2 if head_only else b.lambda_min_G12
        out.append(PhaseRate(a.time, b.time, a.loss, b.loss, -math.log(b.loss / a.loss) / dt,
                             2.0 * beta2 / n * 0.5 * (lam_a + lam_b),
                             2.0 * beta2 / n * 0.5 * (a.lambda_min_G2 + b.lambda_min_G2)))
    return out


def _kernel_measure(G2: np.ndarray, y: np.ndarray, floor: float) -> float:
    w, V = np.linalg.eigh(0.5 * (G2 + G2.T))
    w = np.maximum(w, floor * max(float(w[-1]), 1e-300))
    proj = V.T @ y
    return math.sqrt(float(np.sum(proj * proj / w)) / y.shape[0])


def _losses(f: np.ndarray, y: np.ndarray, Y: float) -> tuple[float, float, float | None]:
    clipped = 0.5 * float(np.mean((np.clip(f, -Y, Y) - y) ** 2))
    raw = 0.5 * float(np.mean((f - y) ** 2))
    binary = set(np.unique(y).tolist()) <= {-1.0, 1.0}
    err = float(np.mean(np.where(f >= 0, 1.0, -1.0) != y)) if binary else None
    return clipped, raw, err


def estimate(
    run: TrainRun,
    X_train: object,
    y_train: object,
    X_test: object,
    y_test: object,
    delta: float = 0.05,
    *,
    options: EstimateOptions | None = None,
    seed: int = 0,
    progress: bool = False,
) -> MeanFieldEstimate:
    """Estimate the generalization gap of a trained ScaledResNet, beside the measured gap.

    ``X_train``, ``y_train`` must be the training data of ``run`` (checked by hash);
    ``X_test`` (m, p), ``y_test`` (m,) are held out. ``delta`` in (0, 1) is the failure
    probability of the confidence term. ``seed`` drives the k-NN calibration, bootstrap
    and Monte-Carlo draws. See :class:`MeanFieldEstimate` for every field and its status.
    """
    start = time.perf_counter()
    opts = options or EstimateOptions()
    if not isinstance(run, TrainRun):
        raise ConfigurationError(f"estimate needs the TrainRun returned by mf.train(), got {type(run).__name__}")
    if not (isinstance(delta, int | float) and 0 < delta < 1):
        raise ConfigurationError(f"delta must be in (0, 1), got {delta!r}")
    Xtr = as_features(X_train, "X_train")
    ytr = as_targets(y_train, Xtr.shape[0], "y_train")
    Xte = as_features(X_test, "X_test")
    yte = as_targets(y_test, Xte.shape[0], "y_test")
    if Xte.shape[1] != Xtr.shape[1]:
        raise ConfigurationError(f"X_test has {Xte.shape[1]} features, X_train has {Xtr.shape[1]}")
    if data_fingerprint(Xtr, ytr) != run.fingerprint:
        raise ConfigurationError("X_train/y_train differ from the data this run was trained on; "
                                 "pass the same arrays given to mf.train()")
    work = copy.deepcopy(run.model).to(torch.float64)
    cfg = work.config
    n = Xtr.shape[0]
    notes: list[str] = []

    # ---- regime (audited at initialisation: the configuration, not the trained weights)
    _load(work, run.checkpoints[0].state)
    lazy = laziness(run, Xtr)
    report = with_laziness(audit(work), lazy)
    reasons = list(report.reasons)
    if run.diverged:
        reasons.append(f"training diverged at step {len(run.losses)}; estimates use the last checkpoint")
    in_scope = not reasons

    # ---- Gram matrices along training
    chosen = [run.checkpoints[i] for i in _select(len(run.checkpoints), opts.max_checkpoints)]
    Xt = torch.as_tensor(Xtr, dtype=torch.float64)
    traj: list[GramPoint] = []
    G2_init: np.ndarray | None = None
    bar = tqdm(chosen, desc="gram", disable=not progress_enabled(progress), leave=False)
    res_std0 = work.prior.residual_std(cfg.d)
    head_std0 = work.prior.head_std(cfg.d)
    tr1_max = np.zeros(cfg.depth)
    tr2_max = 0.0
    head_only = getattr(run, "trainable", "all") == "head"
    trace_drive: list[float] = []  # tr(G)/n of the Gram matrix that drives the run
    G_drive_init: np.ndarray | None = None  # the driving Gram matrix at initialisation
    f0_train: np.ndarray | None = None
    for ck in bar:
        _load(work, ck.state)
        gp = gram_matrices(work, Xt, method=opts.gram_method)
        tr1, tr2 = gram_traces(work, Xt)
        tr1_max = np.maximum(tr1_max, tr1)
        tr2_max = max(tr2_max, tr2)
        trace_drive.append(tr2 if head_only else float(tr1.sum()) + tr2)
        if G2_init is None:
            G2_init = gp.G2
            G_drive_init = gp.G2 if head_only else gp.G1 + gp.G2
            with torch.no_grad():
                f0_train = work(Xt).numpy()
        traj.append(GramPoint(ck.step, ck.time, ck.loss, lambda_min(gp.G2), lambda_min(gp.G1 + gp.G2),
                              *_kl_trajectory(particles_from_state(dict(ck.state)), res_std0,
                                              head_std0, opts, seed)))
    bar.close()
    assert G2_init is not None
    lam2 = np.array([p.lambda_min_G2 for p in traj])
    lam12 = np.array([p.lambda_min_G12 for p in traj])
    times = np.array([p.time for p in traj])
    losses = np.array([p.loss for p in traj])
    premise = bool(np.all(lam2 >= lam2[0] / 2.0))
    if not premise:
        notes.append("lambda_min(G2) fell below half its initial value: the theorem's premise failed")

    # ---- loss decay: gradient-flow bound vs the measured losses
    beta2 = cfg.beta**2
    integral = np.concatenate([[0.0], np.cumsum(np.diff(times) * 0.5 * (lam2[1:] + lam2[:-1]))])
    bound = losses[0] * np.exp(-(2.0 * beta2 / n) * integral)
    decay_holds = bool(np.all(losses <= bound * (1.0 + 1e-9) + 1e-15))
    span = times[-1] - times[0]
    positive = losses > 0
    if len(traj) >= 2 and span > 0 and positive.sum() >= 2:
        slope = float(np.polyfit(times[positive], np.log(losses[positive]), 1)[0])
        fitted = -slope
        mean_l2 = float(integral[-1] / span)
        mean_l12 = float(np.sum(np.diff(times) * 0.5 * (lam12[1:] + lam12[:-1])) / span)
    else:
        fitted = mean_l2 = mean_l12 = math.nan
    phases = _phase_rates(traj, beta2, n, head_only)
    _load(work, run.checkpoints[-1].state)

    # ---- distance from initialisation
    p0 = particles_from_state(dict(run.checkpoints[0].state))
    pT = work.particles()
    res_std = work.prior.residual_std(cfg.d)
    head_std = work.prior.head_std(cfg.d)
    w2_layers = tuple(w2_coupling_bound(p0.residual[i], pT.residual[i]) for i in range(cfg.depth))
    w2_res = w2_coupling_bound(p0.residual.reshape(-1, p0.residual.shape[-1]),
                               pT.residual.reshape(-1, pT.residual.shape[-1]))
    w2_head = w2_coupling_bound(p0.head, pT.head)
    kl_g, kl_k, kl_se2 = [], [], []
    for layer in range(cfg.depth):
        g, k = _kl_pair(pT.residual[layer], res_std, opts, seed + layer)
        kl_g.append(g.value)
        kl_k.append(k.value)
        kl_se2.append(k.stderr**2)
        if k.note:
            notes.append(f"layer {layer}: {k.note}")
    gh, kh = _kl_pair(pT.head, head_std, opts, seed + cfg.depth)
    baseline = _kl_pair(p0.head, head_std, opts, seed + cfg.depth + 1)[1].value
    kl_g_res = float(np.mean(kl_g))
    kl_k_res = float(np.mean(kl_k))
    kl_stderr = math.sqrt(float(np.sum(kl_se2)) / cfg.depth**2 + kh.stderr**2)
    radius = max(gh.value, kh.value) + float(np.mean(np.maximum(kl_g, kl_k)))
    if kl_k_res + kh.value < kl_g_res + gh.value:
        notes.append("k-NN KL below the Gaussian floor: the k-NN estimate is biased low "
                     "(few particles for the dimension); the radius uses the floor")

    # ---- complexity and gap
    Y = opts.target_bound or float(max(np.abs(ytr).max(), np.abs(yte).max()))
    lip, B = 2.0 * Y, 2.0 * Y * Y
    conf = 3.0 * B * math.sqrt(math.log(2.0 / delta) / (2.0 * n))
    with torch.no_grad():
        f_tr, states = work.forward_states(Xt)
        f_te = work(torch.as_tensor(Xte, dtype=torch.float64))
    rc = rm = rm_se = gap = gap_cf = None
    vacuous: bool | None = None
    if in_scope:
        rc = rademacher_closed_form(radius, n, cfg.beta, work.prior.sigma_a)
        rm, rm_se = rademacher_monte_carlo(
            states[-1].numpy(), radius, beta=cfg.beta, sigma_a=work.prior.sigma_a,
            sigma_w=work.prior.sigma_head_w, activation=work.act,
            n_particles=opts.mc_particles, n_signs=opts.mc_signs, seed=seed)
        gap = 2.0 * lip * rm + conf
        gap_cf = 2.0 * lip * rc + conf
        vacuous = bool(not gap < B)  # NaN counts as vacuous
        if vacuous:
            notes.append(f"the gap estimate {gap:.3g} is vacuous: the clipped loss lies in "
                         f"[0, {B:.3g}], so no gap exceeds {B:.3g}")
    kernel = _kernel_measure(G2_init, ytr, opts.eig_floor)
    # tangent complexity: movement per layer x Lipschitz constant of f in that layer's
    # particles, over sqrt(n) (docs/meanfield.md, "Tangent complexity")
    m_res = work.lr_multipliers()["res_u"]
    rt_head = cfg.beta * w2_head * math.sqrt(tr2_max) / math.sqrt(n)
    rt_res = float(sum(cfg.beta * w * math.sqrt(cfg.width * t / m_res)
                       for w, t in zip(w2_layers, tr1_max, strict=True))) / math.sqrt(n)
    rt = rt_head + rt_res
    tr_c_pre = _losses(f_tr.numpy(), ytr, Y)[0]
    rho = rt + math.sqrt(B * math.log(1.0 / delta) / n)
    gap_tan = 2.0 * lip * rt + conf
    gap_opt = math.sqrt(tr_c_pre) * rho + rho * rho
    # stability: (4 beta^2 / n) int_0^T (tr G(t) / n) L(t) dt, per-step losses, the trace
    # interpolated between Gram checkpoints (docs/meanfield.md, "Tangent complexity")
    step_times = run.lr * np.arange(len(run.losses))
    trace_t = np.interp(step_times, times, np.asarray(trace_drive))
    gap_stab = 4.0 * beta2 / n * float(np.trapezoid(trace_t * np.asarray(run.losses), step_times))
    # leave-one-out: kernel ridge with a kernel fixed before training (the network's
    # tangent kernel at initialisation; the limit's head Gram matrix), ridge n/(beta^2 t)
    # (docs/meanfield.md, "Leave-one-out estimate")
    t_end = float(run.checkpoints[-1].time)
    loo = loo_lim = ridge = math.nan
    if t_end > 0 and math.isfinite(t_end) and G_drive_init is not None and np.all(np.isfinite(G_drive_init)):
        ridge = flow_ridge(n, cfg.beta, t_end)
        loo = kernel_ridge_loo(G_drive_init, ytr, ridge, offset=f0_train, clip=Y)
        G2_lim = limit_head_grams(work.embed_input(Xt).detach().numpy(), activation=work.act,
                                  sigma_w=work.prior.sigma_head_w, sigma_a=work.prior.sigma_a,
                                  order=opts.hermite_order)[1]
        loo_lim = kernel_ridge_loo(G2_lim, ytr, ridge, clip=Y)

    # ---- the paper's quantities [D] and the theorem's conditions on this run
    pb = paper_bounds(work.embed_input(Xt).detach().numpy(), ytr, beta=cfg.beta,
                      t=float(times[-1]), sigma_w=work.prior.sigma_head_w,
                      sigma_a=work.prior.sigma_a, activation=work.act, loss_lipschitz=lip,
                      loss_bound=B, confidence_term=conf, order=opts.hermite_order)
    below = [p.time for p in traj if p.lambda_min_G12 < pb.Lambda_G2 / 2.0]
    t0 = float(below[0]) if below else math.inf
    train_time = float(run.checkpoints[-1].time)
    cond_beta = bool(cfg.beta >= math.sqrt(n))
    cond_kl = bool(radius * n <= 1.0)
    cond_time = bool(train_time <= t0)
    if pb.gap_bound_vacuous:
        notes.append(f"the [D] gap bound {pb.gap_bound:.3g} is vacuous (loss range {B:.3g})")

    tr_c, tr_u, tr_e = _losses(f_tr.numpy(), ytr, Y)
    te_c, te_u, te_e = _losses(f_te.numpy(), yte, Y)
    scope = "in scope" if in_scope else "out of scope: " + "; ".join(reasons)
    return MeanFieldEstimate(
        depth=cfg.depth, width=cfg.width, head_width=cfg.head_width, d=cfg.d,
        scaling=str(cfg.scaling), alpha=cfg.alpha, beta=cfg.beta, activation=cfg.activation,
        init=cfg.init, n_train=n, n_test=int(Xte.shape[0]), delta=float(delta),
        regime=report.regime, alpha_eff=report.alpha_eff,
        beta_eff=float(report.beta_eff) if report.beta_eff is not None else math.nan,
        in_scope=in_scope, scope=scope, move_head=lazy.move_head,
        move_residual=lazy.move_residual, gram_change=lazy.gram_change, lazy_measured=lazy.lazy,
        lambda_min_G2_init=float(lam2[0]), lambda_min_G2_final=float(lam2[-1]),
        lambda_min_G2_min=float(lam2.min()), lambda_min_G12_init=float(lam12[0]),
        lambda_min_G12_final=float(lam12[-1]), premise_holds=premise,
        loss_init=float(losses[0]), loss_final=float(losses[-1]),
        loss_decay_bound_final=float(bound[-1]), loss_decay_holds=decay_holds,
        decay_rate_fitted=fitted, decay_rate_predicted_G2=2.0 * beta2 / n * mean_l2,
        decay_rate_predicted_G12=2.0 * beta2 / n * mean_l12,
        w2_bound_residual=w2_res, w2_bound_head=w2_head,
        kl_gaussian_residual=kl_g_res, kl_gaussian_head=gh.value,
        kl_knn_residual=kl_k_res, kl_knn_head=kh.value, kl_knn_stderr=kl_stderr,
        kl_knn_baseline=baseline, kl_radius=radius,
        rademacher_closed_form=rc, rademacher_mc=rm, rademacher_mc_stderr=rm_se,
        loss_lipschitz=lip, loss_bound=B, confidence_term=conf,
        gap_estimate=gap, gap_estimate_closed_form=gap_cf, gap_estimate_vacuous=vacuous,
        kernel_measure=kernel,
        train_loss=tr_c, test_loss=te_c, measured_gap=te_c - tr_c,
        train_loss_unclipped=tr_u, test_loss_unclipped=te_u, measured_gap_unclipped=te_u - tr_u,
        train_error=tr_e, test_error=te_e, diverged=run.diverged, steps=run.steps_done,
        estimate_seconds=time.perf_counter() - start,
        Lambda_s=pb.Lambda_s, Lambda_G2=pb.Lambda_G2, kl_bound_paper=pb.kl_bound,
        rademacher_paper=pb.rademacher_bound, gap_bound_paper=pb.gap_bound,
        gap_bound_paper_vacuous=pb.gap_bound_vacuous, beta_over_sqrt_n=cfg.beta / math.sqrt(n),
        cond_beta=cond_beta, kl_radius_times_n=radius * n, cond_kl=cond_kl, t0_measured=t0,
        train_time=train_time, cond_time=cond_time,
        conditions_met=cond_beta and cond_kl and cond_time,
        trainable=str(getattr(run, "trainable", "all")),
        decay_rate_late_measured=phases[-1].measured if phases else math.nan,
        decay_rate_late_predicted=phases[-1].predicted if phases else math.nan,
        rademacher_sqrt_kl=(cfg.beta * work.prior.sigma_a * math.sqrt(2.0 * max(radius, 0.0) / n)
                            if in_scope else None),
        jacobian_trace_head=tr2_max, jacobian_trace_residual=float(tr1_max.sum()),
        rademacher_tangent_head=rt_head, rademacher_tangent_residual=rt_res,
        rademacher_tangent=rt, gap_estimate_tangent=gap_tan, gap_estimate_optimistic=gap_opt,
        gap_estimate_stability=gap_stab, loo_ridge=ridge, loo_loss=loo, loo_loss_limit=loo_lim,
        gap_estimate_loo=loo - tr_c, gap_estimate_loo_limit=loo_lim - tr_c,
        trajectory=tuple(traj), phase_rates=tuple(phases), w2_bound_per_layer=w2_layers,
        kl_gaussian_per_layer=tuple(kl_g), kl_knn_per_layer=tuple(kl_k), notes=tuple(notes),
    )
