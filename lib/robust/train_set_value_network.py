"""Train the shipped set-based value network of the Neur2RO chapter (paper 36).

Run from the repository root (about 3 minutes on 2 busy cores; the chapter never trains):

    .venv/bin/python -m lib.robust.train_set_value_network [--out lib/robust/weights]

It generates capital-budgeting instances of the training sizes (``TRAIN_SIZES``; the chapter
evaluates on other sizes), labels sampled plans and scenarios with the exact second stage,
fits :func:`lib.robust.set_value_network.train_set_value_network`, measures the error on
fresh instances of the training sizes, and writes ``set_value_network.safetensors`` with a
``manifest.json`` holding its SHA-256 and this record. Seeded: the same command writes the
same weights.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from lib.robust.capital_budgeting import make_instance
from lib.robust.set_value_network import make_set_dataset, save, train_set_value_network

WEIGHTS = Path(__file__).resolve().parent / "weights"
TRAIN_SIZES = (5, 6, 8)
INSTANCE = dict(kappa=2, gamma=2.0, late_factor=0.9, budget_fraction=0.4)
DATA = dict(instances_per_size=20, plans=20, scenarios=10)
NET = dict(item_hidden=16, item_embed=8, post_hidden=16, embed=6, head_hidden=16)
FIT = dict(epochs=200, batch_size=256, lr=3e-3)
SEED = 0


def main(out: Path = WEIGHTS) -> None:
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    rng = np.random.default_rng(SEED)
    instances = [make_instance(rng, n=n, **INSTANCE) for n in TRAIN_SIZES
                 for _ in range(DATA["instances_per_size"])]
    data = make_set_dataset(instances, DATA["plans"], DATA["scenarios"], rng)
    net, report = train_set_value_network(data, **NET, **FIT, seed=SEED)
    held_out = [make_instance(rng, n=n, **INSTANCE) for n in TRAIN_SIZES for _ in range(5)]
    test = make_set_dataset(held_out, DATA["plans"], DATA["scenarios"], rng)
    pred = np.concatenate([net.forward(test.instances[k], test.X[s], test.XI[s])
                           / test.instances[k].profit.sum()
                           for s, k in enumerate(test.index)])
    net.meta = dict(
        train_sizes=list(TRAIN_SIZES), instance=INSTANCE, data=DATA, net=NET, fit=FIT,
        seed=SEED, samples=int(len(data.labels)), train_seconds=round(report.seconds, 1),
        total_seconds=round(time.perf_counter() - start, 1),
        train_mae=report.train_mae, held_out_mae=float(np.abs(pred - test.labels).mean()),
        label_mean_abs=float(np.abs(test.labels).mean()), final_loss=report.losses[-1],
        versions=dict(python=platform.python_version(), torch=torch.__version__,
                      numpy=np.__version__),
    )
    path = save(net, out)
    print(f"wrote {path} in {net.meta['total_seconds']} s: train MAE {report.train_mae:.4f}, "
          f"held-out MAE {net.meta['held_out_mae']:.4f} (labels in units of total profit, "
          f"mean |label| {net.meta['label_mean_abs']:.3f})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    main(parser.parse_args().out)
