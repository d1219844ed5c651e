"""Train the two shipped displacement networks of the tumour-volume registration chapter.

Run from the repository root (about 5 minutes on one thread; the chapter never trains):

    .venv/bin/python -m lib.registration.train_displacement_networks [--out DIR] [--scale F]

Both networks are :class:`~lib.registration.displacement_network.DisplacementUNet` trained
unsupervised (no tumour labels) on a pool of synthetic pairs drawn from their own seed stream,
``SeedSequence(TRAIN_ENTROPY + (k,))`` per chunk, never the chapter's ``[BOOK_SEED, k]``:

1. ``similarity``: the similarity-only loss L_1 (MSE + diffusion regulariser);
2. ``two_stage``: Stage 1 runs the frozen ``similarity`` network on every training pair and turns
   its field into a soft tumour mask (:func:`~lib.registration.volume_preserving.stage_one_mask`);
   Stage 2 trains a fresh network with L_2 (similarity down-weighted inside the warped mask, the
   adaptive volume-preserving loss inside it), as the official ``train_simple.py -m soft
   -st dynamic`` does with its pre-registration network.

It logs the loss and step time, evaluates both on held-out pairs (another stream), and writes
``similarity.safetensors``, ``two_stage.safetensors`` and ``manifest.json`` (SHA-256 hashes and
this record). Seeded: the same command on the same torch build writes the same weights.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from lib.registration.displacement_network import (
    WEIGHTS,
    DisplacementUNet,
    save_networks,
    train_network,
)
from lib.registration.metrics import evaluate_registration
from lib.registration.organ_phantoms import OrganPairs, make_organ_pairs
from lib.registration.volume_preserving import gaussian_blur, registration_loss, stage_one_mask

TRAIN_ENTROPY = (34, 2023, 7)   # the training pool's stream; held-out pairs use (34, 2023, 8)
CHUNK = 64                      # the pool is drawn in chunks, chunk k from TRAIN_ENTROPY + (k,)
POOL = 2048
HELD_OUT = 64
WIDTH = 16
FIT = dict(steps=2000, batch_size=16, lr=1e-3, blur_fraction=0.3, blur_sigma=1.5)
LOSS = dict(smooth_weight=0.5, vp_weight=3.0)
SEED = 0


def _stream(entropy: tuple[int, ...], k: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence((*entropy, k)))


def concat_pairs(parts: list[OrganPairs]) -> OrganPairs:
    """One :class:`OrganPairs` from several, in order."""
    if not parts:
        raise ValueError("nothing to concatenate")
    return OrganPairs(**{f: torch.cat([getattr(p, f) for p in parts])
                         for f in ("moving", "fixed", "moving_organ", "fixed_organ",
                                   "moving_tumour")},
                      tumour_radius=np.concatenate([p.tumour_radius for p in parts]))


def training_pairs(n: int = POOL) -> OrganPairs:
    """The first ``n`` pairs of the training pool (a multiple of ``CHUNK``): chunk ``k`` is
    drawn from ``SeedSequence(TRAIN_ENTROPY + (k,))``, a stream the chapter's ``[BOOK_SEED, k]``
    never meets, so any prefix of the pool can be regenerated without the rest."""
    if n < 1 or n % CHUNK:
        raise ValueError(f"n must be a positive multiple of {CHUNK}, got {n}")
    return concat_pairs([make_organ_pairs(CHUNK, _stream(TRAIN_ENTROPY, k))
                         for k in range(n // CHUNK)])


def held_out_pairs(n: int = HELD_OUT) -> OrganPairs:
    """Pairs for the training record's held-out metrics (a third stream)."""
    return make_organ_pairs(n, _stream(TRAIN_ENTROPY[:2], TRAIN_ENTROPY[2] + 1))


def stage_one_masks(net: DisplacementUNet, pairs: OrganPairs, chunk: int = 256) -> torch.Tensor:
    """Stage 1 of the two-stage method on every pair: the soft mask from ``net``'s field."""
    out = []
    with torch.no_grad():
        for i in range(0, len(pairs), chunk):
            s = slice(i, i + chunk)
            disp = net(pairs.moving[s], pairs.fixed[s])
            out.append(stage_one_mask(disp, pairs.moving_organ[s]))
    return torch.cat(out)


def _batches(tensors: dict[str, torch.Tensor], batch_size: int, gen: torch.Generator):
    n = next(iter(tensors.values())).shape[0]
    while True:
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            if len(idx) == batch_size:
                yield {k: v[idx] for k, v in tensors.items()}


def _loss(with_mask: bool):
    def loss_fn(disp, batch, blurred):
        src, dst = (batch["moving_blur"], batch["fixed_blur"]) if blurred else (
            batch["moving"], batch["fixed"])
        if not with_mask:
            return registration_loss(disp, src, dst, batch["organ"],
                                     smooth_weight=LOSS["smooth_weight"])
        return registration_loss(disp, src, dst, batch["organ"], tumour_mask=batch["mask"],
                                 **LOSS)
    return loss_fn


def _evaluate(net: DisplacementUNet, pairs: OrganPairs) -> dict:
    with torch.no_grad():
        r = evaluate_registration(net(pairs.moving, pairs.fixed), pairs.moving_organ,
                                  pairs.moving_tumour, pairs.fixed_organ)
    return dict(median_dice=float(np.median(r["dice"])), median_tsr=float(np.median(r["tsr"])),
                stsr=r["stsr"])


def main(out: Path = WEIGHTS, scale: float = 1.0) -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    steps = max(1, int(FIT["steps"] * scale))
    pool = training_pairs(max(CHUNK, int(POOL * scale) // CHUNK * CHUNK))
    held = held_out_pairs()
    print(f"{len(pool)} training pairs, {len(held)} held-out pairs "
          f"({time.perf_counter() - start:.1f} s)", flush=True)
    data = dict(moving=pool.moving, fixed=pool.fixed, organ=pool.moving_organ,
                moving_blur=gaussian_blur(pool.moving, FIT["blur_sigma"]),
                fixed_blur=gaussian_blur(pool.fixed, FIT["blur_sigma"]))
    fit = dict(steps=steps, lr=FIT["lr"], blur_fraction=FIT["blur_fraction"],
               log=lambda s: print(s, flush=True))
    logs, nets = {}, {}
    for name in ("similarity", "two_stage"):
        torch.manual_seed(SEED)
        gen = torch.Generator().manual_seed(SEED)
        if name == "two_stage":   # Stage 1: masks from the frozen similarity-only network
            data["mask"] = stage_one_masks(nets["similarity"], pool)
        print(f"training {name} ({steps} steps)", flush=True)
        nets[name] = DisplacementUNet(WIDTH)
        logs[name] = train_network(nets[name], _batches(data, FIT["batch_size"], gen),
                                   _loss(name == "two_stage"), **fit)
    record = dict(
        pool=len(pool), chunk=CHUNK, train_entropy=list(TRAIN_ENTROPY), held_out=len(held), fit=FIT,
        steps=steps, loss=LOSS, seed=SEED,
        seconds={k: round(v.seconds, 1) for k, v in logs.items()},
        ms_per_step={k: round(1000 * v.seconds_per_step, 1) for k, v in logs.items()},
        final_loss={k: v.losses[-1] for k, v in logs.items()},
        loss_curves={k: dict(steps=v.steps, losses=[round(x, 5) for x in v.losses])
                     for k, v in logs.items()},
        held_out_metrics={k: _evaluate(v, held) for k, v in nets.items()},
        total_seconds=round(time.perf_counter() - start, 1),
        versions=dict(python=platform.python_version(), torch=torch.__version__,
                      numpy=np.__version__),
    )
    path = save_networks(nets, out, record)
    print(f"wrote {path} in {record['total_seconds']} s; held-out: "
          f"{record['held_out_metrics']}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of the steps and pool (a quick trial; not shipped)")
    args = parser.parse_args()
    main(args.out, args.scale)
