"""Train the shipped models of the Rectified Diffusion chapter (paper 24) on 2-D toy data.

Run from the repository root (about 2 minutes on one idle core; the chapter never trains):

    .venv/bin/python -m lib.diffusion.train_toy_rectification [--out DIR]

1. A teacher: an epsilon-prediction :class:`TimeMLP` on the eight-Gaussian ring with Stable
   Diffusion's scaled-linear VP schedule, the ordinary denoising loss.
2. Its deterministic coupling: ``PAIRS`` noises and their 100-step DDIM (eta = 0) solutions.
3. Students, each fine-tuned from the teacher for the same number of steps on the same pairs:
   Rectified Diffusion with epsilon, v and x0 targets (diffusion form), 2-rectified flow (flow
   form, velocity target), and a control that continues the teacher's own loss with fresh,
   unpaired noise (same data: the teacher's samples), so extra training alone is measured.

Writes ``<name>.safetensors`` for each and ``manifest.json`` with their SHA-256 hashes.
Seeded: the same command on the same torch build writes the same weights.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lib.diffusion.pair_rectification import TimeMLP, VPSchedule, make_pairs, train_flow, train_vp
from lib.diffusion.toy_data import eight_gaussians
from lib.diffusion.toy_weights import WEIGHTS, save_models

SEED = 0
ARCH = dict(dim=2, width=128, depth=3, frequencies=8)
DATA = dict(n=20_000, radius=2.0, std=0.1)
TEACHER = dict(steps=8000, batch=512, lr=1e-3)
PAIRS = dict(n=8000, ode_steps=100)
STUDENT = dict(steps=4000, batch=512, lr=3e-4)


def main(out: Path = WEIGHTS) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    start = time.perf_counter()
    schedule = VPSchedule("scaled_linear")
    rng = np.random.default_rng(SEED)
    data = eight_gaussians(DATA["n"], rng, DATA["radius"], DATA["std"])

    print("teacher (epsilon prediction, fresh noise):", flush=True)
    teacher = TimeMLP(**ARCH)
    logs = {"teacher": train_vp(teacher, schedule, data, param="eps", seed=SEED, log=print,
                                **TEACHER)}
    noise = torch.randn((PAIRS["n"], 2), generator=torch.Generator().manual_seed(SEED + 1))
    noise, x0_hat = make_pairs(teacher.eval(), schedule, noise, PAIRS["ode_steps"])

    models = {"teacher": teacher}
    students = {
        "rd_eps": ("vp", "eps", noise), "rd_v": ("vp", "v", noise), "rd_x0": ("vp", "x0", noise),
        "unpaired_eps": ("vp", "eps", None), "reflow": ("flow", None, noise),
    }
    for k, (name, (form, param, paired)) in enumerate(students.items()):
        print(f"{name} ({form} form, {param or 'velocity'} target, "
              f"{'paired' if paired is not None else 'fresh'} noise):", flush=True)
        model = copy.deepcopy(teacher).train()
        seed = SEED + 10 + k
        if form == "vp":
            logs[name] = train_vp(model, schedule, x0_hat, paired, param=param, seed=seed,
                                  log=print, **STUDENT)
        else:
            logs[name] = train_flow(model, x0_hat, paired, seed=seed, log=print, **STUDENT)
        models[name] = model.eval()

    training = dict(
        seed=SEED, schedule=dict(kind=schedule.kind, T=schedule.T, beta_start=schedule.beta_start,
                                 beta_end=schedule.beta_end),
        data=dict(distribution="eight_gaussians", **DATA), teacher=TEACHER, pairs=PAIRS,
        student=STUDENT, students={k: dict(form=f, param=p, paired=n is not None)
                                   for k, (f, p, n) in students.items()},
        final_loss={k: round(v.losses[-1], 5) for k, v in logs.items()},
        ms_per_step={k: round(v.step_ms, 2) for k, v in logs.items()},
        total_seconds=round(time.perf_counter() - start, 1),
        versions=dict(python=platform.python_version(), torch=torch.__version__,
                      numpy=np.__version__),
    )
    path = save_models(models, out, ARCH, training)
    print(f"wrote {path} in {training['total_seconds']} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    main(parser.parse_args().out)
