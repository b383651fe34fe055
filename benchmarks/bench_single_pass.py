"""certcompress's differential single pass against independent reimplementations of
NeuroDiff's and ReluDiff's single (unsplit) forward pass (benchmarks/neurodiff_ref.py),
issue 15 part 1.

* ``mnist_like``: a 784-100-100-10 MLP trained here on scikit-learn's digits upsampled to
  28x28 (bilinear, ``torch.nn.functional.interpolate``), the shape of the MNIST MLPs of
  the NeuroDiff paper;
* ``digits``: the 64-100-100-10 MLP on the 8x8 digits.

Each against its float16 cast (weights cast to half and back to float64), over +-3/255
boxes (clipped to [0, 1]) around test images. Per box: the NeuroDiff-reference bound
(per-output minimum of its two unsplit passes, and each pass), the ReluDiff-reference
bound, certcompress's single pass (``ChainState``, relaxation "choose", ``optimize`` 0
and 20 -- ``single_pass`` of bench_equivalence.py), the bounds tier (CROWN; since the chain routing, the smaller of its engine and the
differential single pass, and the engine alone as ``bounds_tier_engine``), and the
largest deviation found (random vertices + PGD), all as the l_inf bound (max over
outputs of the per-output bound of ``|f - f'|``). Reports the median / min / max of
ours / NeuroDiff-ref and the times.

Writes benchmarks/results/single_pass.json. Run:
``PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_single_pass.py`` (``--boxes N``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
from _common import write_results  # type: ignore[import-not-found]
from bench_equivalence import float16_copy, single_pass, tier_bound  # type: ignore[import-not-found]
from neurodiff_ref import neurodiff, reludiff  # type: ignore[import-not-found]
from torch import Tensor, nn

import certcompress as cc
from certcompress.bounds.propagation.engine import PropagationOptions
from certcompress.bounds.tiers import bounds_tier
from certcompress.demo.digits import load_digits
from certcompress.domain import InputDomain


def engine_tier_bound(net: nn.Module, comp: nn.Module, dom: InputDomain
                      ) -> tuple[float, float]:
    """The bounds tier without the chain routing (the engine alone, as before it): l_inf
    bound and seconds."""
    t0 = time.perf_counter()
    mb = bounds_tier(cc.trace(net, dom.shape), cc.trace(comp, dom.shape), dom,
                     PropagationOptions(chain=False))
    return max(mb.per_output), time.perf_counter() - t0


def train_mlp(x: Tensor, y: Tensor, n_in: int, epochs: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(n_in, 100), nn.ReLU(), nn.Linear(100, 100),
                        nn.ReLU(), nn.Linear(100, 10))
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(y))
        for i in range(0, len(y), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(mlp(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return mlp.double().eval()


def layers_of(mlp: nn.Module) -> list[tuple[Tensor, Tensor]]:
    return [(m.weight.detach().double(), m.bias.detach().double())
            for m in mlp.modules() if isinstance(m, nn.Linear)]


def found_linf(net: nn.Module, comp: nn.Module, lo: Tensor, hi: Tensor, seed: int,
               n_vertices: int = 1024, steps: int = 20, outputs: int = 3) -> float:
    """Largest |f - f'| (any output) found at random vertices, the centre and by PGD on
    the deviation of the ``outputs`` outputs that deviate most there, from the best
    vertices: a lower bound on the true value."""
    g = torch.Generator().manual_seed(seed)
    shape = lo.shape
    lo, hi = lo.reshape(1, -1), hi.reshape(1, -1)
    pick = torch.rand(n_vertices, lo.shape[1], generator=g, dtype=torch.float64) < 0.5
    xs = torch.cat([torch.where(pick, hi, lo), (lo + hi) / 2])

    def dev(x: Tensor) -> Tensor:
        return net(x.reshape((-1,) + tuple(shape[1:]))) - comp(
            x.reshape((-1,) + tuple(shape[1:])))

    with torch.no_grad():
        d = dev(xs)
    best = float(d.abs().max())
    step = (hi - lo) / 8
    for o in d.abs().amax(0).argsort(descending=True)[:outputs].tolist():
        for sign in (1.0, -1.0):
            x = xs[(sign * d[:, o]).argsort(descending=True)[:2]].clone()
            for _ in range(steps):
                x.requires_grad_(True)
                v = sign * dev(x)[:, o]
                (gr,) = torch.autograd.grad(v.sum(), x)
                with torch.no_grad():
                    x = torch.minimum(torch.maximum(x + step * gr.sign(), lo), hi)
            with torch.no_grad():
                best = max(best, float(dev(x).abs().max()))
    return best


def run_model(name: str, mlp: nn.Module, x_test: Tensor, shape: tuple[int, ...], boxes: int
              ) -> dict[str, Any]:
    comp = float16_copy(mlp)
    net_l, comp_l = layers_of(mlp), layers_of(comp)
    rows = []
    for i in range(boxes):
        x = x_test[i:i + 1].double()
        lo, hi = (x - 3 / 255).clamp(0, 1), (x + 3 / 255).clamp(0, 1)
        dom = InputDomain.box(lo, hi, shape=shape)
        t0 = time.perf_counter()
        nd = neurodiff(net_l, comp_l, lo.reshape(-1), hi.reshape(-1))
        t_nd = time.perf_counter() - t0
        t0 = time.perf_counter()
        rd = reludiff(net_l, comp_l, lo.reshape(-1), hi.reshape(-1))
        t_rd = time.perf_counter() - t0
        ours, t_ours = single_pass(mlp, comp, dom)
        opt5, t_opt5 = single_pass(mlp, comp, dom, optimize=5)
        opt, t_opt = single_pass(mlp, comp, dom, optimize=20)
        crown, t_crown = tier_bound(mlp, comp, dom, "crown")
        engine, t_engine = engine_tier_bound(mlp, comp, dom)
        found = found_linf(mlp, comp, lo, hi, seed=i)
        row = {"box": i, "neurodiff_ref": float(nd.bound.max()),
               "neurodiff_ref_pass1": float(nd.first.bound.max()),
               "neurodiff_ref_pass2": float(nd.second.bound.max()),
               "neurodiff_vars": nd.second.vars, "case9_per_layer": list(nd.first.case9),
               "neurodiff_ref_s": t_nd, "reludiff_ref": float(rd.bound.max()),
               "reludiff_ref_s": t_rd, "ours": ours, "ours_s": t_ours, "ours_opt5": opt5,
               "ours_opt5_s": t_opt5, "ours_opt20": opt,
               "ours_opt20_s": t_opt, "bounds_tier_crown": crown, "bounds_tier_s": t_crown,
               "bounds_tier_engine": engine, "bounds_tier_engine_s": t_engine,
               "found": found}
        for k in ("neurodiff_ref", "reludiff_ref", "ours", "ours_opt5", "ours_opt20",
                  "bounds_tier_crown", "bounds_tier_engine"):
            if row[k] < found:
                raise AssertionError(f"{name} box {i}: {k} = {row[k]!r} is below the found "
                                     f"deviation {found!r}: unsound")
        rows.append(row)
        print(f"  {name} box {i}: found {found:.4g}  ND-ref {row['neurodiff_ref']:.4g} "
              f"(passes {row['neurodiff_ref_pass1']:.4g} / {row['neurodiff_ref_pass2']:.4g}, "
              f"{nd.second.vars} vars)  RD-ref {row['reludiff_ref']:.4g}  ours {ours:.4g}  "
              f"ours-opt20 {opt:.4g}  crown tier {crown:.4g} (engine alone {engine:.4g})",
              flush=True)

    def ratio_stats(key: str, ref: str) -> dict[str, float]:
        r = [row[key] / row[ref] for row in rows]
        return {"median": statistics.median(r), "min": min(r), "max": max(r),
                "looser_boxes": sum(v > 1 for v in r)}

    def med(key: str) -> float:
        return statistics.median(row[key] for row in rows)

    summary = {
        "boxes": len(rows),
        "ours_over_neurodiff_ref": ratio_stats("ours", "neurodiff_ref"),
        "ours_opt5_over_neurodiff_ref": ratio_stats("ours_opt5", "neurodiff_ref"),
        "ours_opt20_over_neurodiff_ref": ratio_stats("ours_opt20", "neurodiff_ref"),
        "reludiff_ref_over_neurodiff_ref": ratio_stats("reludiff_ref", "neurodiff_ref"),
        "ours_over_reludiff_ref": ratio_stats("ours", "reludiff_ref"),
        "crown_tier_over_neurodiff_ref": ratio_stats("bounds_tier_crown", "neurodiff_ref"),
        "engine_tier_over_neurodiff_ref": ratio_stats("bounds_tier_engine", "neurodiff_ref"),
        "neurodiff_ref_over_found": ratio_stats("neurodiff_ref", "found"),
        "ours_over_found": ratio_stats("ours", "found"),
        "median_bound": {k: med(k) for k in ("found", "neurodiff_ref", "neurodiff_ref_pass1",
                                             "neurodiff_ref_pass2", "reludiff_ref", "ours",
                                             "ours_opt5", "ours_opt20", "bounds_tier_crown",
                                             "bounds_tier_engine")},
        "median_seconds": {k: med(k) for k in ("neurodiff_ref_s", "reludiff_ref_s", "ours_s",
                                               "ours_opt5_s", "ours_opt20_s",
                                               "bounds_tier_s", "bounds_tier_engine_s")},
    }
    s = summary["ours_over_neurodiff_ref"]
    print(f"{name}: ours / NeuroDiff-ref median {s['median']:.3f} (min {s['min']:.3f}, max "
          f"{s['max']:.3f}, looser on {s['looser_boxes']}/{len(rows)}); opt5 / ND-ref "
          f"median {summary['ours_opt5_over_neurodiff_ref']['median']:.3f} (looser on "
          f"{summary['ours_opt5_over_neurodiff_ref']['looser_boxes']}), opt20 / ND-ref "
          f"median {summary['ours_opt20_over_neurodiff_ref']['median']:.3f}; bounds tier / "
          f"ND-ref median {summary['crown_tier_over_neurodiff_ref']['median']:.3f} (engine "
          f"alone {summary['engine_tier_over_neurodiff_ref']['median']:.3f})", flush=True)
    return {"summary": summary, "boxes": rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--boxes", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=20)
    args = ap.parse_args()
    data = load_digits()
    payload: dict[str, Any] = {"epsilon_box": 3 / 255, "compressed": "float16 cast"}

    up_tr = nn.functional.interpolate(data.x_train, size=(28, 28), mode="bilinear",
                                      align_corners=False).clamp(0, 1)
    up_te = nn.functional.interpolate(data.x_test, size=(28, 28), mode="bilinear",
                                      align_corners=False).clamp(0, 1)
    mnist = train_mlp(up_tr, data.y_train, 784, args.epochs)
    acc = float((mnist(up_te.double()).argmax(1) == data.y_test).double().mean())
    print(f"784-100-100-10 on digits upsampled to 28x28: test accuracy {acc:.3f}", flush=True)
    payload["mnist_like"] = {"architecture": "784-100-100-10", "accuracy": acc,
                             **run_model("mnist_like", mnist, up_te, (1, 1, 28, 28),
                                         args.boxes)}

    digits = train_mlp(data.x_train, data.y_train, 64, args.epochs)
    acc = float((digits(data.x_test.double()).argmax(1) == data.y_test).double().mean())
    print(f"64-100-100-10 on digits: test accuracy {acc:.3f}", flush=True)
    payload["digits"] = {"architecture": "64-100-100-10", "accuracy": acc,
                         **run_model("digits", digits, data.x_test, (1, 1, 8, 8), args.boxes)}
    print(f"written {write_results('single_pass', payload)}")


if __name__ == "__main__":
    main()
