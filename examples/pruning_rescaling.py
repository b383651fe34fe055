"""Magnitude pruning is not rescaling-invariant; path-magnitude pruning and its certificate
are (the qualitative finding of Gonon et al., ICML 2025, section 5 of the shared doc).

A small MLP is trained on scikit-learn's digits. A random function-preserving neuron-wise
rescaling multiplies each hidden neuron's incoming weights and bias by a factor drawn
from {1, 128, 4096} and divides its outgoing weights by it (ReLU is positively
homogeneous, and powers of two make it exact in floating point: the rescaled network
computes bit for bit the same function). Then both networks are pruned globally at 40%,
60% and 80% by magnitude and by path-magnitude, and each pruning is certified.

Expected: magnitude pruning of the rescaled network collapses (it removes the shrunken
outgoing weights of rescaled neurons first), while path-magnitude pruning picks the same
weights in both networks, so accuracy and certificate are unchanged.

Run: ``.venv/bin/python examples/pruning_rescaling.py [--out out/pruning_rescaling]``
(about a minute on a laptop CPU); prints a table and writes a PNG and a CSV.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from torch import nn

import certcompress as cc
from certcompress.compress.pruning import PruningPlan, prune
from certcompress.demo.digits import accuracy, load_digits, train_classifier

SHAPE = (1, 1, 8, 8)
RADIUS = 1.0  # pixel intensities in [0, 1]


def make_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128),
                         nn.ReLU(), nn.Linear(128, 10))


def rescale(model: nn.Sequential, factors: tuple[float, ...], seed: int) -> nn.Sequential:
    """Each hidden neuron scaled by a random factor; the function is unchanged."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    linears = [m for m in out if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for a, b in zip(linears[:-1], linears[1:]):
            f = torch.tensor(factors)[torch.randint(len(factors), (a.out_features,),
                                                    generator=gen)]
            a.weight.mul_(f[:, None])
            a.bias.mul_(f)
            b.weight.div_(f[None, :])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="out/pruning_rescaling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=40)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    data = load_digits(seed=args.seed)
    torch.manual_seed(args.seed)
    model = train_classifier(make_mlp(), data.x_train, data.y_train, epochs=args.epochs,
                             seed=args.seed, progress=False)
    rescaled = rescale(model, (1.0, 128.0, 4096.0), seed=args.seed + 1)
    with torch.no_grad():
        same = torch.equal(model(data.x_test), rescaled(data.x_test))
    print(f"trained MLP: test accuracy {accuracy(model, data.x_test, data.y_test):.3f}; "
          f"rescaled network computes the same outputs bit for bit: {same}")
    print(f"path-norm original {cc.path_norm(model, SHAPE):.6g}, rescaled "
          f"{cc.path_norm(rescaled, SHAPE):.6g} (invariant)\n")

    rows = []
    for sparsity in (0.4, 0.6, 0.8):
        for criterion in ("magnitude", "path-magnitude"):
            for name, net in (("original", model), ("rescaled", rescaled)):
                plan = PruningPlan.by_criterion(net, sparsity, criterion, input_shape=SHAPE)
                pruned, cert = prune(net, plan, SHAPE, RADIUS, reference_inputs=data.x_test,
                                     search_steps=20, seed=args.seed)
                rows.append({"sparsity": sparsity, "criterion": criterion, "network": name,
                             "accuracy": accuracy(pruned, data.x_test, data.y_test),
                             "certified_bound": cert.bound,
                             "deviation_max": cert.measurements.deviation_max,
                             "adversarial_max": cert.measurements.adversarial_max})

    import pandas as pd

    df = pd.DataFrame(rows)
    print(f"{'sparsity':>8}  {'criterion':<15}{'network':<10}{'accuracy':>9}"
          f"{'certified bound':>17}{'measured max':>14}{'gradient ascent':>17}")
    for r in df.itertuples():
        print(f"{r.sparsity:>8.0%}  {r.criterion:<15}{r.network:<10}{r.accuracy:>9.3f}"
              f"{r.certified_bound:>17.4g}{r.deviation_max:>14.4g}{r.adversarial_max:>17.4g}")
    df.to_csv(out / "pruning_rescaling.csv", index=False)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {("magnitude", "original"): ("tab:blue", "-"),
              ("magnitude", "rescaled"): ("tab:blue", "--"),
              ("path-magnitude", "original"): ("tab:orange", "-"),
              ("path-magnitude", "rescaled"): ("tab:orange", "--")}
    for (crit, net), part in df.groupby(["criterion", "network"]):
        color, ls = styles[(crit, net)]
        mk = "o" if net == "original" else "x"  # identical curves stay visible
        ax1.plot(part["sparsity"], part["accuracy"], ls, marker=mk, ms=8, color=color,
                 label=f"{crit}, {net}")
        ax2.plot(part["sparsity"], part["certified_bound"], ls, marker=mk, ms=8, color=color,
                 label=f"{crit}, {net}")
    ax1.set(xlabel="sparsity", ylabel="test accuracy", title="accuracy after pruning")
    ax2.set(xlabel="sparsity", ylabel="certified l1 bound (log)", yscale="log",
            title="certificate (||x||_inf <= 1)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("random neuron rescaling (factors 1, 128, 4096): magnitude pruning collapses, "
                 "path-magnitude does not change")
    fig.tight_layout()
    png = out / "pruning_rescaling.png"
    fig.savefig(png, dpi=110)
    print(f"\nplot written to {png}, table to {out / 'pruning_rescaling.csv'}")


if __name__ == "__main__":
    main()
