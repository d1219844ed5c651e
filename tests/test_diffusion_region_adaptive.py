"""Region-adaptive sampling on a small random MiniDiT: exactness, cost accounting, selection."""

import numpy as np
import pytest
import torch

from lib.diffusion import sampling
from lib.diffusion.region_adaptive import (
    dit_pass_macs,
    jaccard,
    region_adaptive_sample,
    region_scores,
    select_active,
    step_plan,
    steps_for_budget,
    subset_forward,
)
from lib.diffusion.testbed import models

torch.set_num_threads(1)


def small_dit(seed: int = 0) -> models.MiniDiT:
    """A small MiniDiT with non-zero output (adaLN-zero starts every branch at zero)."""
    torch.manual_seed(seed)
    model = models.MiniDiT(width=32, depth=2, heads=2, mlp_ratio=2).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def problem(n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(n, 16, models.TEXT_WIDTH, generator=g)
    empty = torch.randn(1, 16, models.TEXT_WIDTH, generator=g)
    noise = torch.randn(n, 4, 8, 8, generator=g)
    return text, empty, noise


def test_ratio_one_is_dense_sampling():
    model, (text, empty, noise) = small_dit(), problem(3)
    ref = sampling.sample_flow(model, models.dit_scheduler(), text, empty, steps=6,
                               latents=noise.clone())  # fmt: skip
    ras = region_adaptive_sample(model, models.dit_scheduler(), text, empty, noise, steps=6,
                                 ratio=1.0, warmup=2, reset_steps=(4,))  # fmt: skip
    torch.testing.assert_close(ras.latents, ref, atol=2e-6, rtol=1e-5)
    assert ras.active.all() and ras.dense.all()


def test_subset_pass_with_fresh_cache_equals_dense_pass():
    model, (text, empty, noise) = small_dit(1), problem(1, seed=1)
    x, context = torch.cat([noise, noise]), torch.cat([empty, text])
    cache = models.KVCache.empty(len(model.blocks))
    with torch.no_grad():
        dense = model(x, 0.6, context, kv_cache=cache)
        active = torch.tensor([0, 5, 9, 17, 33, 63])
        subset = model(x, 0.6, context, active=active, kv_cache=cache)
    torch.testing.assert_close(subset, model.tokens_of(dense)[:, active], atol=1e-5, rtol=1e-5)
    # without the cache (no attention recovery) the active tokens see only each other
    with torch.no_grad():
        alone = model(x, 0.6, context, active=active)
    assert not torch.allclose(alone, subset, atol=1e-4)


def test_per_sample_subset_forward_matches_the_model_subset_path():
    model, (text, empty, noise) = small_dit(6), problem(3, seed=6)
    x, context = torch.cat([noise, noise]), torch.cat([empty.expand(3, -1, -1), text])
    rows = torch.stack([torch.randperm(64, generator=torch.Generator().manual_seed(s))[:20]
                        for s in range(3)])  # fmt: skip
    active = torch.cat([rows, rows])
    for recovery in (True, False):
        cache = models.KVCache.empty(len(model.blocks))
        with torch.no_grad():
            model(x, 0.4, context, kv_cache=cache)
            mine = subset_forward(model, x, 0.4, context, active, cache if recovery else None)
        for b in range(6):  # one sample at a time through MiniDiT's own active= path
            ref_cache = models.KVCache.empty(len(model.blocks))
            with torch.no_grad():
                model(x[b : b + 1], 0.4, context[b : b + 1], kv_cache=ref_cache)
                ref = model(x[b : b + 1], 0.4, context[b : b + 1], active=active[b],
                            kv_cache=ref_cache if recovery else None)  # fmt: skip
            torch.testing.assert_close(mine[b : b + 1], ref, atol=2e-5, rtol=1e-4)
            if recovery:  # the cache entries of the active tokens were refreshed the same way
                torch.testing.assert_close(cache.keys[0][b : b + 1], ref_cache.keys[0],
                                           atol=2e-5, rtol=1e-4)  # fmt: skip
    with pytest.raises(ValueError, match="active"):
        subset_forward(model, x, 0.4, context, rows)
    with pytest.raises(ValueError, match="empty"):
        subset_forward(model, x, 0.4, context, active, models.KVCache.empty(len(model.blocks)))


def linear_macs(model: models.MiniDiT, x, context, **kwargs) -> int:
    """MACs of every nn.Linear in a real pass, counted with forward hooks."""
    total = []

    def hook(module, inputs, _output):
        total.append(inputs[0].numel() // module.in_features * module.in_features
                     * module.out_features)  # fmt: skip

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, torch.nn.Linear)]  # fmt: skip
    with torch.no_grad():
        model(x, 0.5, context, **kwargs)
    for h in handles:
        h.remove()
    return sum(total)


@pytest.mark.parametrize("n_active, recovery", [(64, True), (24, True), (24, False)])
def test_mac_count_matches_hooked_linear_layers_plus_attention(n_active, recovery):
    model, (text, empty, noise) = small_dit(2), problem(1, seed=2)
    x, context = torch.cat([noise, noise]), torch.cat([empty, text])
    cfg = model.config
    cache = models.KVCache.empty(len(model.blocks))
    with torch.no_grad():
        model(x, 0.5, context, kv_cache=cache)
    kwargs = {} if n_active == 64 else {"active": torch.arange(n_active)}
    if recovery and n_active < 64:
        kwargs["kv_cache"] = cache
    measured = linear_macs(model, x, context, **kwargs)
    # MiniDiT embeds all 64 tokens before taking the subset; an efficient pass would not.
    measured -= 2 * (64 - n_active) * cfg.in_channels * cfg.width
    n_keys = 64 if recovery else n_active
    attention = 2 * cfg.depth * (2 * n_active * n_keys * cfg.width + 2 * n_active * 16 * cfg.width)
    assert dit_pass_macs(model, n_active, n_keys, text_tokens=16, batch=2) == measured + attention


def test_sampler_cost_adds_up_over_steps():
    model, (text, empty, noise) = small_dit(), problem(1)
    res = region_adaptive_sample(model, models.dit_scheduler(), text, empty, noise, steps=8,
                                 ratio=0.5, warmup=2, reset_steps=(5,))  # fmt: skip
    dense = dit_pass_macs(model, 64, text_tokens=16, batch=2)
    subset = dit_pass_macs(model, 32, 64, text_tokens=16, batch=2)
    assert res.dense.tolist() == [True, True, False, False, False, True, False, False]
    assert res.total_macs == 3 * dense + 5 * subset
    assert 0.5 < subset / dense < 0.55
    assert steps_for_budget(res.total_macs, dense) == 6  # ceil(5.6...)
    counts = res.active.sum(-1)[0]
    assert counts.tolist() == [64, 64, 32, 32, 32, 64, 32, 32]


def test_region_scores_std_and_patches():
    g = torch.Generator().manual_seed(3)
    update = torch.randn(4, 8, 8, generator=g)
    torch.testing.assert_close(region_scores(update), update.std(dim=0).reshape(-1))
    torch.testing.assert_close(region_scores(update[None], metric="l2norm"),
                               update.norm(dim=0).reshape(-1))  # fmt: skip
    pooled = region_scores(update, patch=2)
    assert pooled.shape == (16,)
    torch.testing.assert_close(pooled[0], update.std(dim=0)[:2, :2].mean())


def test_selection_count_and_direction():
    scores = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 0.5])
    # the official default (high_ratio 1) caches the highest scores: the DiT runs on the lowest
    assert select_active(scores, 2).tolist() == [1, 5]
    assert select_active(scores, 2, high_ratio=0.0).tolist() == [0, 2]
    # high_ratio 0.5: two cached from each end, the middle two computed
    assert select_active(scores, 2, high_ratio=0.5).tolist() == [3, 4]
    assert select_active(scores, 6).tolist() == list(range(6))
    for h in (0.0, 0.3, 0.7, 1.0):
        assert select_active(torch.rand(64), 20, high_ratio=h).numel() == 20


def test_starvation_term_moves_often_cached_tokens_up_the_ranking():
    scores = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 0.5])
    drops = torch.tensor([0, 0, 0, 0, 0, 12.0])  # token 5 (lowest score) was cached 12 times
    # caching the low end (high_ratio 0): the factor brings the starved token back
    assert 5 not in select_active(scores, 2, drops, starvation_scale=0.0, high_ratio=0.0).tolist()
    assert 5 in select_active(scores, 2, drops, starvation_scale=0.2, high_ratio=0.0).tolist()
    # official default (high end cached): a token cached often climbs into the cached top
    drops = torch.tensor([0, 12.0, 0, 0, 0, 0])
    assert 1 in select_active(scores, 2, drops, starvation_scale=0.0).tolist()
    assert 1 not in select_active(scores, 2, drops, starvation_scale=0.2).tolist()


def test_ras_run_selects_fixed_count_and_starvation_spreads_updates():
    model, (text, empty, noise) = small_dit(4), problem(2, seed=4)
    kwargs = dict(steps=12, ratio=0.25, warmup=2, reset_steps=(), high_ratio=0.0)
    plain = region_adaptive_sample(model, models.dit_scheduler(), text, empty, noise,
                                   starvation_scale=0.0, **kwargs)  # fmt: skip
    fair = region_adaptive_sample(model, models.dit_scheduler(), text, empty, noise,
                                  starvation_scale=2.0, **kwargs)  # fmt: skip
    for res in (plain, fair):
        assert (res.active[:, 2:].sum(-1) == 16).all()
        assert np.isfinite(res.latents.numpy()).all()
    # a strong starvation term leaves fewer tokens that were never recomputed
    never = lambda r: (~r.active[:, 2:].any(axis=1)).sum()  # noqa: E731
    assert never(fair) < never(plain)


def test_random_selection_and_no_recovery_differ_from_ras():
    model, (text, empty, noise) = small_dit(5), problem(2, seed=5)
    kwargs = dict(steps=8, ratio=0.5, warmup=2, reset_steps=(5,))
    sch = models.dit_scheduler()
    ras = region_adaptive_sample(model, sch, text, empty, noise, **kwargs)
    rnd = region_adaptive_sample(model, sch, text, empty, noise, selection="random", **kwargs)
    blind = region_adaptive_sample(model, sch, text, empty, noise, attention_recovery=False,
                                   **kwargs)  # fmt: skip
    assert (rnd.active[:, 2:5].sum(-1) == 32).all()
    assert not torch.allclose(ras.latents, rnd.latents)
    assert not torch.allclose(ras.latents, blind.latents)
    assert blind.total_macs < ras.total_macs
    again = region_adaptive_sample(model, sch, text, empty, noise, selection="random", **kwargs)
    torch.testing.assert_close(again.latents, rnd.latents)  # seeded


def test_jaccard_and_overlap():
    a = np.array([1, 1, 0, 0], bool)
    assert jaccard(a, a) == 1.0
    assert jaccard(a, np.array([0, 1, 1, 0], bool)) == pytest.approx(1 / 3)
    assert jaccard(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    with pytest.raises(ValueError, match="shape"):
        jaccard(a, a[:3])


def test_step_plan():
    assert step_plan(6, 2, (4,)).tolist() == [True, True, False, False, True, False]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ratio=0.0), "ratio"),
        (dict(ratio=1.5), "ratio"),
        (dict(warmup=0), "warmup"),
        (dict(warmup=9), "warmup"),
        (dict(reset_steps=(8,)), "reset step"),
        (dict(metric="mean"), "metric"),
        (dict(selection="attention"), "selection"),
        (dict(high_ratio=1.5), "high_ratio"),
        (dict(guidance=0.5), "guidance"),
    ],
)
def test_sampler_rejects_bad_arguments(kwargs, match):
    model, (text, empty, noise) = small_dit(), problem(1)
    args = dict(steps=8) | kwargs
    with pytest.raises(ValueError, match=match):
        region_adaptive_sample(model, models.dit_scheduler(), text, empty, noise, **args)


def test_other_bad_inputs():
    model, (text, empty, noise) = small_dit(), problem(2)
    sch = models.dit_scheduler()
    with pytest.raises(ValueError, match="noise"):
        region_adaptive_sample(model, sch, text, empty, noise[:1], steps=4)
    with pytest.raises(ValueError, match="empty_states"):
        region_adaptive_sample(model, sch, text, empty[0], noise, steps=4)
    with pytest.raises(ValueError, match="n_active"):
        select_active(torch.ones(4), 0)
    with pytest.raises(ValueError, match="NaN"):
        select_active(torch.tensor([1.0, float("nan")]), 1)
    with pytest.raises(ValueError, match="high_ratio"):
        select_active(torch.ones(4), 2, high_ratio=-0.1)
    with pytest.raises(ValueError, match="drops"):
        select_active(torch.ones(4), 2, torch.ones(3))
    with pytest.raises(ValueError, match="patch"):
        region_scores(torch.ones(4, 8, 8), patch=3)
    with pytest.raises(ValueError, match="metric"):
        region_scores(torch.ones(4, 8, 8), metric="max")
    with pytest.raises(ValueError, match="n_keys"):
        dit_pass_macs(model, 32, 16)
    with pytest.raises(ValueError, match="n_queries"):
        dit_pass_macs(model, 0)
    with pytest.raises(ValueError, match="positive"):
        steps_for_budget(0, 1)
