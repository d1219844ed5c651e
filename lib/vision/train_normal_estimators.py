"""Train the four small normal estimators the StableNormal chapter (paper 07) ships.

Run from the repository root (one thread; a few minutes on an idle core, the chapter never
trains):

    .venv/bin/python -m lib.vision.train_normal_estimators [--out DIR] [--scale FRACTION]

It renders the training height fields (``render_heightfield_dataset`` of
:mod:`lib.vision.heightfield_normals`, seed ``DATA_SEED``; the chapter tests on other seeds),
trains direct regression, plain
diffusion, YOSO (shrinkage regulariser) and the feature-conditioned refiner with
:func:`lib.vision.diffusion_normals.train_estimator`, logs each step time, and writes float16
safetensors with a manifest of SHA-256 hashes and this record. Seeded: the same command on
the same machine writes the same weights.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np

from lib.vision.diffusion_normals import KINDS, save_estimators, train_estimator
from lib.vision.heightfield_normals import render_heightfield_dataset

WEIGHTS = Path(__file__).resolve().parent / "weights" / "normal_estimators"
DATA = dict(n=2000, size=24)
DATA_SEED = 10_000
STEPS = dict(regression=700, diffusion=700, yoso=700, refiner=700)
FIT = dict(batch=32, lr=2e-3, shrink=1.0, start_scale=0.5, refine_t_max=600)
SEED = 0


def main(out: Path = WEIGHTS, kinds: tuple[str, ...] = KINDS, scale: float = 1.0) -> None:
    import torch

    torch.set_num_threads(1)
    start = time.perf_counter()
    data = render_heightfield_dataset(DATA["n"], DATA_SEED, size=DATA["size"])
    nets, reports = {}, {}
    for k, kind in enumerate(kinds):
        steps = max(1, int(STEPS[kind] * scale))
        nets[kind], rep = train_estimator(kind, data.images, data.normals, steps, seed=SEED + k,
                                          **FIT)
        reports[kind] = dict(steps=steps, seconds=round(rep.seconds, 1),
                             final_loss=float(np.mean(rep.losses[-100:])))
        print(f"{kind}: {steps} steps in {rep.seconds:.0f} s "
              f"({rep.seconds / steps * 1e3:.0f} ms/step), "
              f"final loss {reports[kind]['final_loss']:.4f}", flush=True)
    meta = dict(data=DATA, data_seed=DATA_SEED, fit=FIT, seed=SEED, size=DATA["size"],
                reports=reports, total_seconds=round(time.perf_counter() - start, 1),
                versions=dict(python=platform.python_version(), torch=torch.__version__,
                              numpy=np.__version__))
    if set(kinds) == set(KINDS):
        save_estimators(nets, out, meta)
        print(f"wrote {out} in {meta['total_seconds']} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of the steps (a smoke test: pair it with --out elsewhere)")
    args = parser.parse_args()
    main(args.out, scale=args.scale)
