"""One choice per layer: a multiple-choice knapsack, exact by integer programming
(``scipy.optimize.milp``, HiGHS) or greedy for very many layers.

``minimize sum_l objective[l, k_l]  subject to  sum_l constraint[l, k_l] <= cap``.
Entries may be ``inf`` (choice not allowed). Both the budget problem (objective: bits,
constraint: bound) and its dual (objective: bound, constraint: bits) have this form.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator

import numpy as np

__all__ = ["solve_choice"]


def _total(m: np.ndarray, x: np.ndarray) -> float:
    return math.fsum(float(v) for v in m[np.arange(len(x)), x])


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence file descriptor 1 (HiGHS prints some diagnostics from C++ directly)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _milp(objective: np.ndarray, constraint: np.ndarray, cap: float) -> np.ndarray | None:
    from scipy.optimize import Bounds, LinearConstraint, milp

    n_layers, k = objective.shape
    allowed = np.isfinite(objective) & np.isfinite(constraint)
    obj = np.where(allowed, objective, 0.0)
    con = np.where(allowed, constraint, 0.0)
    so = float(np.abs(obj).max()) or 1.0
    sc = max(float(np.abs(con).max()), abs(cap)) or 1.0
    a_eq = np.zeros((n_layers, n_layers * k))
    for i in range(n_layers):
        a_eq[i, i * k:(i + 1) * k] = 1.0
    integral = bool(np.all(con == np.round(con)))
    # HiGHS accepts rows violated by up to 1e-7 (relative to this scaling): stay inside it,
    # except for integer rows (bit counts), where a total exactly at the cap is allowed.
    cap_n = cap / sc if integral else cap / sc - 2e-7
    with _quiet_stdout():
        res = milp((obj / so).ravel(),
                   constraints=[LinearConstraint(a_eq, 1.0, 1.0),
                                LinearConstraint((con / sc).ravel()[None, :], -np.inf, cap_n)],
                   integrality=np.ones(n_layers * k), bounds=Bounds(0.0, allowed.ravel() * 1.0),
                   options={"time_limit": 30.0})
    if res.x is None or res.status not in (0, 1):
        return None
    return np.asarray(res.x).reshape(n_layers, k).argmax(axis=1)


def _greedy(objective: np.ndarray, constraint: np.ndarray, cap: float,
            start: np.ndarray | None) -> np.ndarray | None:
    n_layers = objective.shape[0]
    rows = np.arange(n_layers)
    con_ok = np.where(np.isfinite(objective), constraint, np.inf)
    x = start.copy() if start is not None else np.argmin(con_ok, axis=1)
    tiny = 1e-300
    for _ in range(objective.size + 1):  # phase 1: reach feasibility
        if _total(con_ok, x) <= cap:
            break
        gain = con_ok[rows, x][:, None] - con_ok
        price = np.maximum(objective - objective[rows, x][:, None], tiny)
        score = np.where(gain > 0, gain / price, -np.inf)
        if not np.isfinite(score.max()):
            return None
        i, j = np.unravel_index(int(np.argmax(score)), score.shape)
        x[i] = j
    else:
        return None
    for _ in range(objective.size + 1):  # phase 2: improve while feasible
        slack = cap - _total(con_ok, x)
        extra = con_ok - con_ok[rows, x][:, None]
        gain = objective[rows, x][:, None] - np.where(np.isfinite(objective), objective, np.inf)
        ok = (gain > 0) & (extra <= slack)
        if not ok.any():
            break
        score = np.where(ok, gain / np.maximum(extra, tiny), -np.inf)
        i, j = np.unravel_index(int(np.argmax(score)), score.shape)
        x[i] = j
    return x


def solve_choice(objective: np.ndarray, constraint: np.ndarray, cap: float, *,
                 start: np.ndarray | None = None, method: str = "auto",
                 max_ilp_layers: int = 500) -> tuple[np.ndarray | None, str]:
    """Indices ``k_l`` (or None if infeasible) and the method used (``"ilp"``/``"greedy"``)."""
    use_ilp = method == "ilp" or (method == "auto" and objective.shape[0] <= max_ilp_layers)
    if use_ilp:
        x = _milp(objective, constraint, cap)
        if x is not None and _total(constraint, x) <= cap:
            return x, "ilp"
        if x is not None:  # within the solver's tolerance but not exactly: repair greedily
            return _greedy(objective, constraint, cap, x), "ilp+greedy"
    return _greedy(objective, constraint, cap, start), "greedy"
