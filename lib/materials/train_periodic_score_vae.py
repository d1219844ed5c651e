"""Train the shipped networks of the CDVAE chapter (paper 15): the periodic CrystalVAE, the
same model without wrapping, and the direct-decoding VAE baseline.

    .venv/bin/python -m lib.materials.train_periodic_score_vae [--steps 3000]

Seeded (the same command writes the same weights on the same platform), one thread, logs its
progress and step time. Writes ``weights/periodic_score_vae/*.safetensors`` and a
``manifest.json`` with their SHA-256 hashes and this run's record.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from lib.materials.periodic_score_vae import (
    CrystalVAE,
    DirectDecoderVAE,
    batches,
    canonical_frame,
    denoising_loss,
    direct_loss,
    geometric_sigmas,
    to_tensors,
)
from lib.materials.periodic_toy import make_periodic_toy
from lib.materials.weights_io import WEIGHTS
from lib.util.shipped_weights import sha256_file

SEED = 0
DATA = dict(n=2000, seed=12345, n_atoms=(4, 6))
NOISE = dict(sigma_max=1.0, sigma_min=0.01, levels=10)
NET = dict(latent=8, hidden=48, n_max=6)


def _train(model, loss_fn, data, steps, lr, name, log_every=250):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    stream = batches(data, 64, np.random.default_rng(SEED))
    begin = time.perf_counter()
    for step in range(1, steps + 1):
        loss, parts = loss_fn(model, next(stream))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            per = (time.perf_counter() - begin) / step
            print(f"[{name}] step {step}/{steps} loss {float(loss):.4f} {parts} "
                  f"({per * 1e3:.1f} ms/step)", flush=True)
    return time.perf_counter() - begin


def main(out: Path = WEIGHTS, steps: int = 2500) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    start = time.perf_counter()
    data = make_periodic_toy(**DATA)
    print(f"{len(data)} relaxed structures in {time.perf_counter() - start:.1f} s", flush=True)
    t = to_tensors(data)
    sigmas = geometric_sigmas(**NOISE)
    out.mkdir(parents=True, exist_ok=True)
    record = dict(data=DATA, noise=NOISE, net=NET, steps=steps, seed=SEED, seconds={})
    for name, periodic in (("periodic", True), ("nonperiodic", False)):
        torch.manual_seed(SEED)
        model = CrystalVAE(**NET, periodic=periodic)
        record["seconds"][name] = round(_train(
            model, lambda m, b: denoising_loss(m, b, sigmas), t, steps, 2e-3, name), 1)
        save_file(model.state_dict(), str(out / f"{name}.safetensors"))
    torch.manual_seed(SEED)
    direct = DirectDecoderVAE(**NET)
    record["seconds"]["direct"] = round(_train(
        direct, direct_loss, to_tensors(canonical_frame(data)), steps, 2e-3, "direct"), 1)
    save_file(direct.state_dict(), str(out / "direct.safetensors"))
    record["total_seconds"] = round(time.perf_counter() - start, 1)
    record["versions"] = dict(python=platform.python_version(), torch=torch.__version__,
                              numpy=np.__version__)
    hashes = {p.name: sha256_file(p) for p in sorted(out.glob("*.safetensors"))}
    (out / "manifest.json").write_text(json.dumps(dict(sha256=hashes, training=record),
                                                  indent=2) + "\n")
    print(f"wrote {sorted(hashes)} to {out} in {record['total_seconds']} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=WEIGHTS)
    parser.add_argument("--steps", type=int, default=2500)
    args = parser.parse_args()
    main(args.out, args.steps)
