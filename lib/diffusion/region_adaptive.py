"""Region-adaptive sampling (RAS) for a rectified-flow diffusion transformer, and its baselines.

Liu et al. (2025), *Region-Adaptive Sampling for Diffusion Transformers* (arXiv 2502.10389),
its method (region identification, attention recovery, dense warm-up and error-reset steps)
and the official code (github.com/microsoft/RAS,
``ras_scheduling_flow_match_euler_discrete.py``). On the Euler grid of SD3's
``FlowMatchEulerDiscreteScheduler``, ``x_{i+1} = x_i + (sigma_{i+1} - sigma_i) v_i``, a RAS step
runs the DiT on a subset of the image tokens only (the *fast-update* region) and reuses, for
every other token, the velocity it was last given (the *slow-update* region):

1. **Region score** from the latest update ``Delta_i = (sigma_{i+1} - sigma_i) v_i``: per token
   (patch), the standard deviation of ``Delta_i`` over the latent channels, averaged over the
   patch's latent pixels (:func:`region_scores`; the official ``"std"`` metric, an L2 option too).
2. **Starvation term**: the score is multiplied by ``exp(k d)``, with ``d`` the number of steps
   at which a token was cached (:func:`select_active`).
3. **Selection**: a fixed number of tokens (``ratio`` of them) is active. Which end of the
   ranking is cached follows the official code: a fraction ``high_ratio`` of the cached
   tokens from the top, the rest from the bottom (default 1: the highest scores are cached,
   the DiT runs on the lowest; see :func:`select_active` for what this means for the
   starvation term).
4. **Attention recovery**: the active tokens attend to the keys and values of *all* tokens,
   the slow ones' taken from a cache of their last computed step (MiniDiT's ``kv_cache``).
5. **Dense warm-up and error-reset steps**: the first ``warmup`` steps and the steps in
   ``reset_steps`` run the whole image, refreshing every cached velocity and key/value.

With classifier-free guidance the batch is ``[unconditional; conditional]`` and one active set
serves both halves, as in the official code. Each prompt has its own active set, so RAS steps
over many prompts at once pass ``MiniDiT`` a ``(B, n)`` ``active`` (:func:`subset_forward`).

The baselines of the paper share this loop: dense sampling (``ratio=1``), random token
selection at the same ratio (``selection="random"``), and RAS without attention recovery
(``attention_recovery=False``: the active tokens attend to each other only). The fourth,
fewer uniform steps at equal cost, is plain dense sampling with fewer steps
(:func:`steps_for_budget`).

Cost is counted in multiply-accumulates (MACs) of the matrix products of a pass
(:func:`dit_pass_macs`), the "token-FLOPs" the chapter compares.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from lib.diffusion.sampling import guided
from lib.diffusion.testbed.models import KVCache, MiniDiT

METRICS = ("std", "l2norm")
SELECTIONS = ("ras", "random")


# ---------------------------------------------------------------------------------------------
# Cost model


def dit_pass_macs(model: MiniDiT, n_queries: int, n_keys: int | None = None,
                  text_tokens: int = 16, batch: int = 1) -> int:  # fmt: skip
    """Multiply-accumulates of one :class:`MiniDiT` pass over ``n_queries`` image tokens.

    Only matrix products are counted (norms, activations, softmax and the residual additions
    are lower order). With width ``d``, MLP ratio ``r``, text width ``d_t``, ``L`` text
    tokens, ``q`` processed (query) tokens and ``k`` tokens they attend to, per sample:

    * per block, per processed token: the linear layers ``qkv`` (3 d^2), self-attention output
      (d^2), cross-attention query and output (2 d^2) and the MLP (2 r d^2): ``(6 + 2r) d^2``;
    * per block, attention: self-attention ``2 q k d`` (scores and weighted values, all
      heads together), cross-attention ``2 q L d``, and the text keys/values ``2 L d_t d``;
    * per pass: patch embedding and output projection ``2 q C d``, and the timestep MLP and
      modulation ``256 d + d^2 + 6 d^2`` (independent of ``q``).

    ``n_keys`` defaults to ``n_queries`` (a dense pass, or a subset pass without attention
    recovery); a RAS pass with recovery has ``n_keys`` = all tokens. ``batch`` multiplies
    everything (2 under classifier-free guidance).
    """
    n_keys = n_queries if n_keys is None else n_keys
    if not 0 < n_queries <= model.tokens or not 0 < n_keys <= model.tokens:
        raise ValueError(f"n_queries and n_keys must lie in [1, {model.tokens}], "
                         f"got {n_queries}, {n_keys}")  # fmt: skip
    if n_keys < n_queries:
        raise ValueError(f"n_keys ({n_keys}) cannot be smaller than n_queries ({n_queries})")
    if text_tokens < 1 or batch < 1:
        raise ValueError(f"text_tokens and batch must be positive, got {text_tokens}, {batch}")
    cfg = model.config
    d, r, dt, c = cfg.width, cfg.mlp_ratio, cfg.text_width, cfg.in_channels
    per_block = ((6 + 2 * r) * d * d * n_queries + 2 * n_queries * n_keys * d
                 + 2 * n_queries * text_tokens * d + 2 * text_tokens * dt * d)  # fmt: skip
    per_pass = 2 * n_queries * c * d + 256 * d + 7 * d * d
    return batch * (cfg.depth * per_block + per_pass)


def steps_for_budget(budget_macs: float, macs_per_step: float) -> int:
    """The number of dense steps whose cost is the smallest one at least ``budget_macs``
    (the fewer-uniform-steps baseline gets at least the budget it is compared at)."""
    if budget_macs <= 0 or macs_per_step <= 0:
        raise ValueError(f"budget and cost per step must be positive, got {budget_macs}, "
                         f"{macs_per_step}")  # fmt: skip
    return max(1, math.ceil(budget_macs / macs_per_step - 1e-9))


# ---------------------------------------------------------------------------------------------
# The schedule, the region score and the selection rule


def step_plan(steps: int, warmup: int, reset_steps: Sequence[int] = ()) -> np.ndarray:
    """Boolean ``(steps,)``: True where a step is dense (warm-up or error reset), False where it
    is a RAS step (official ``scheduler_start_step`` and ``error_reset_steps``)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not 0 <= warmup <= steps:
        raise ValueError(f"warmup must lie in [0, steps={steps}], got {warmup}")
    if warmup == 0:
        raise ValueError("warmup must be at least 1: the first step has no update to score")
    dense = np.zeros(steps, dtype=bool)
    dense[:warmup] = True
    for s in reset_steps:
        if not 0 <= int(s) < steps:
            raise ValueError(f"reset step {s} is outside [0, {steps})")
        dense[int(s)] = True
    return dense


def region_scores(update: torch.Tensor, patch: int = 1, metric: str = "std") -> torch.Tensor:
    """Per-patch region score of an Euler update ``(C, H, W)`` (or ``(1, C, H, W)``).

    ``"std"``: the standard deviation over the latent channels at every latent pixel (the
    official default metric), ``"l2norm"``: the Euclidean norm over the channels; either is
    then averaged over each ``patch x patch`` block. Returns ``(H/patch * W/patch,)`` in
    row-major patch order (the DiT's token order).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if update.ndim == 4:
        if update.shape[0] != 1:
            raise ValueError(f"region_scores takes one update, got a batch of {update.shape[0]}")
        update = update[0]
    if update.ndim != 3:
        raise ValueError(f"update must be (C, H, W), got shape {tuple(update.shape)}")
    c, h, w = update.shape
    if patch < 1 or h % patch or w % patch:
        raise ValueError(f"patch {patch} must be positive and divide the latent size {h}x{w}")
    if c < 2 and metric == "std":
        raise ValueError("the std metric needs at least two channels")
    per_pixel = update.std(dim=0) if metric == "std" else update.norm(dim=0)
    blocks = per_pixel.reshape(h // patch, patch, w // patch, patch)
    return blocks.mean(dim=(1, 3)).reshape(-1)


def select_active(
    scores: torch.Tensor,
    n_active: int,
    drops: torch.Tensor | None = None,
    starvation_scale: float = 0.1,
    high_ratio: float = 1.0,
) -> torch.Tensor:
    """Indices (sorted) of the ``n_active`` tokens the DiT computes at the next step: the
    official rule (``ras_selection`` in the official scheduler), written out.

    Tokens are ranked by ``score * exp(k * drops)``, with ``k = starvation_scale`` and
    ``drops`` the number of earlier RAS steps at which each token was cached (the official
    ``drop_cnt``; its constant offset does not change the ranking). Of the ``N - n_active``
    tokens to cache, a fraction ``high_ratio`` is taken from the top of the ranking and the rest
    from the bottom; the DiT runs on the tokens in between. With the official default
    ``high_ratio = 1`` the highest-ranked tokens are cached and the lowest computed, so the
    starvation factor, which raises the rank of tokens cached often, keeps them cached;
    with ``high_ratio < 1`` it lifts long-cached tokens out of the low end into the computed
    band (the official SD3 example uses ``high_ratio = 0.3``, ``starvation_scale = 1``).
    Counts are exact here (``round``), where the official code truncates both parts with
    ``int`` (and would cache everything at ``high_ratio = 0``).
    """
    if not 0.0 <= high_ratio <= 1.0:
        raise ValueError(f"high_ratio must lie in [0, 1], got {high_ratio}")
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D (one per token), got shape {tuple(scores.shape)}")
    n = scores.numel()
    if not 1 <= n_active <= n:
        raise ValueError(f"n_active must lie in [1, {n}], got {n_active}")
    if not torch.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    rank = scores.double()
    if drops is not None:
        if drops.shape != scores.shape:
            raise ValueError(f"drops has shape {tuple(drops.shape)}, "
                             f"scores {tuple(scores.shape)}")  # fmt: skip
        rank = rank * torch.exp(starvation_scale * drops.double())
    n_cached = n - n_active
    n_high = round(n_cached * high_ratio)
    n_low = n_cached - n_high
    # A stable sort keeps ties in token order, so the selection is deterministic.
    order = torch.sort(rank, stable=True).indices
    return torch.sort(order[n_low : n - n_high]).values


def jaccard(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Intersection over union of two boolean masks (1 for two empty masks)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks differ in shape: {a.shape} vs {b.shape}")
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# ---------------------------------------------------------------------------------------------
# The sampler


@dataclass
class RASResult:
    """Output of :func:`region_adaptive_sample`.

    ``latents``: final latents ``(n, C, H, W)``; ``active``: ``(n, steps, N)`` boolean, the
    tokens the DiT computed at each step (all True on dense steps); ``scores``: ``(n, steps,
    N)`` region scores used to select each step's tokens (NaN on dense steps); ``macs``:
    ``(steps,)`` multiply-accumulates per prompt of each step (guidance batch included);
    ``dense``: the step plan; ``seconds``: wall time.
    """

    latents: torch.Tensor
    active: np.ndarray
    scores: np.ndarray
    macs: np.ndarray
    dense: np.ndarray
    seconds: float
    config: dict = field(default_factory=dict)

    @property
    def total_macs(self) -> float:
        """MACs per prompt of the whole sampling run."""
        return float(self.macs.sum())

    def late_overlap(self, start: int | None = None) -> np.ndarray:
        """Jaccard overlap of the active sets of consecutive RAS steps ``(i, i + 1)`` with
        ``i >= start`` (default: the second half of the run), one row per prompt."""
        steps = self.dense.size
        start = steps // 2 if start is None else start
        pairs = [i for i in range(start, steps - 1) if not self.dense[i] and not self.dense[i + 1]]
        if not pairs:
            raise ValueError("no two consecutive RAS steps after the start step")
        return np.array([[jaccard(a[i], a[i + 1]) for i in pairs] for a in self.active])


@torch.no_grad()
def subset_forward(model: MiniDiT, latents: torch.Tensor, sigma: torch.Tensor | float,
                   encoder_hidden_states: torch.Tensor, active: torch.Tensor,
                   kv_cache: KVCache | None = None) -> torch.Tensor:  # fmt: skip
    """The DiT's velocity on a *per-sample* token subset: ``active`` ``(B, n_a)`` token indices,
    output ``(B, n_a, C)``.

    RAS chooses one set per prompt, so sampling many prompts at once needs per-sample sets,
    which ``MiniDiT.forward`` takes as a ``(B, n)`` ``active``; this checks the shapes and the
    cache and makes that call.
    With a filled ``kv_cache`` the active tokens attend to all tokens (attention recovery) and
    their cache entries are refreshed; without one they attend to each other only.
    """
    b = latents.shape[0]
    active = torch.as_tensor(active, dtype=torch.long)
    if active.ndim != 2 or active.shape[0] != b or active.shape[1] == 0:
        raise ValueError(f"active must be (B={b}, n_active >= 1), got {tuple(active.shape)}")
    if kv_cache is not None and not kv_cache.filled:
        raise ValueError("kv_cache is empty: run a dense pass with it first")
    return model(latents, sigma, encoder_hidden_states, active=active, kv_cache=kv_cache)


@torch.no_grad()
def region_adaptive_sample(
    model: MiniDiT,
    scheduler: FlowMatchEulerDiscreteScheduler,
    text_states: torch.Tensor,
    empty_states: torch.Tensor,
    noise: torch.Tensor,
    *,
    steps: int = 20,
    guidance: float = 3.0,
    ratio: float = 0.5,
    warmup: int = 3,
    reset_steps: Sequence[int] = (8, 15),
    starvation_scale: float = 0.1,
    metric: str = "std",
    high_ratio: float = 1.0,
    selection: str = "ras",
    attention_recovery: bool = True,
    seed: int = 0,
) -> RASResult:
    """Region-adaptive sampling (RAS, the paper's method) on the Euler grid of a
    ``FlowMatchEulerDiscreteScheduler``, with classifier-free guidance.

    ``text_states`` ``(n, L, d)`` are the prompts' encoder states, ``empty_states`` ``(1, L, d)``
    the empty prompt's, ``noise`` ``(n, C, H, W)`` the starting latents. At a RAS step the DiT
    runs on ``round(ratio * N)`` tokens of each prompt, chosen by :func:`select_active` from the
    scores (:func:`region_scores`) of that prompt's previous update, or uniformly at random
    (``selection="random"``, seeded by ``seed``); the other tokens keep their last velocity.
    Both halves of the guidance batch share a prompt's tokens. Steps ``0..warmup-1`` and
    ``reset_steps`` are dense (``MiniDiT.forward`` with the key/value cache);
    RAS steps use :func:`subset_forward`. ``attention_recovery=False`` drops the key/value
    cache, so active tokens attend to each other only. ``ratio=1`` is dense sampling
    (:func:`lib.diffusion.sampling.sample_flow` from the same noise).
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio (the sampled fraction of tokens) must lie in (0, 1], got {ratio}")
    if guidance < 1.0:
        raise ValueError(f"guidance must be >= 1 (1 = no guidance), got {guidance}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    if not 0.0 <= high_ratio <= 1.0:
        raise ValueError(f"high_ratio must lie in [0, 1], got {high_ratio}")
    n = text_states.shape[0]
    if noise.ndim != 4 or noise.shape[0] != n:
        raise ValueError(f"noise must be (n={n}, C, H, W), got {tuple(noise.shape)}")
    if noise.shape[2] * noise.shape[3] != model.tokens:
        raise ValueError(f"noise has {noise.shape[2] * noise.shape[3]} tokens, the model "
                         f"{model.tokens}")  # fmt: skip
    if empty_states.ndim != 3 or empty_states.shape[0] != 1:
        raise ValueError(f"empty_states must be (1, L, d), got {tuple(empty_states.shape)}")
    dense = step_plan(steps, warmup, reset_steps)
    n_tokens = model.tokens
    n_active = max(1, min(n_tokens, round(ratio * n_tokens)))
    if n_active == n_tokens:
        dense[:] = True
    scheduler.set_timesteps(steps)
    sigmas, timesteps = scheduler.sigmas, scheduler.timesteps
    train_steps = scheduler.config.num_train_timesteps
    text_tokens = text_states.shape[1]
    macs_dense = dit_pass_macs(model, n_tokens, text_tokens=text_tokens, batch=2)
    macs_subset = dit_pass_macs(model, n_active, n_tokens if attention_recovery else n_active,
                                text_tokens=text_tokens, batch=2)  # fmt: skip
    macs = np.where(dense, macs_dense, macs_subset).astype(float)
    active_log = np.ones((n, steps, n_tokens), dtype=bool)
    score_log = np.full((n, steps, n_tokens), np.nan)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    context = torch.cat([empty_states.expand(n, -1, -1), text_states])
    cache = KVCache.empty(len(model.blocks))
    x = noise.clone()
    velocity = torch.zeros_like(x)  # the last velocity of every token, (n, C, H, W)
    drops = torch.zeros(n, n_tokens, dtype=torch.float64)  # times each token was cached
    active = None  # (n, n_active) token indices of each prompt at a RAS step
    for i in range(steps):
        sigma = timesteps[i] / train_steps
        x2 = torch.cat([x, x])
        if dense[i]:
            velocity = guided(model(x2, sigma, context, kv_cache=cache), guidance)
        else:
            kv = cache if attention_recovery else None
            both = torch.cat([active, active])  # one active set for both guidance halves
            fresh = guided(subset_forward(model, x2, sigma, context, both, kv), guidance)
            tokens = model.tokens_of(velocity).clone()
            tokens.scatter_(1, active[..., None].expand(-1, -1, tokens.shape[-1]), fresh)
            velocity = model.latents_of(tokens)
        update = (sigmas[i + 1] - sigmas[i]) * velocity
        x = x + update
        if i + 1 < steps and not dense[i + 1]:  # choose the next step's active tokens
            rows = []
            for p in range(n):
                if selection == "ras":
                    score = region_scores(update[p], metric=metric)
                    rows.append(select_active(score, n_active, drops[p], starvation_scale,
                                              high_ratio))  # fmt: skip
                    score_log[p, i + 1] = score.double().numpy()
                else:
                    picks = torch.randperm(n_tokens, generator=gen)[:n_active]
                    rows.append(torch.sort(picks).values)
            active = torch.stack(rows)
            mask = torch.zeros(n, n_tokens, dtype=torch.bool).scatter_(1, active, True)
            drops += (~mask).double()
            active_log[:, i + 1] = mask.numpy()
    config = dict(steps=steps, guidance=guidance, ratio=ratio, warmup=warmup,
                  reset_steps=tuple(reset_steps), starvation_scale=starvation_scale,
                  metric=metric, high_ratio=high_ratio, selection=selection,
                  attention_recovery=attention_recovery, n_active=n_active)  # fmt: skip
    return RASResult(x, active_log, score_log, macs, dense, time.perf_counter() - start, config)
