"""TIME: the closed-form cross-attention edit, token alignment, the text-side baseline, checks."""

import copy

import pytest
import torch
from torch import nn

from lib.diffusion.model_editing import (
    align_tokens,
    augmented_pairs,
    changed_tensors,
    choose_lambda,
    closed_form_projection,
    cross_attention_projections,
    edit_states,
    projection_inputs,
    text_state_map,
    time_edit,
    token_embedding_edit,
    token_ids,
    total_variation,
)
from lib.diffusion.testbed import models
from lib.diffusion.testbed.data import MiniTokenizer

PAIR = ("a circle", "a green circle")


def problem(seed: int, n: int = 12, d_in: int = 8, d_out: int = 5):
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn(d_out, d_in, generator=g, dtype=torch.float64)
    c = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    v = torch.randn(n, d_out, generator=g, dtype=torch.float64)
    return w0, c, v


def objective(w, w0, c, v, lam):
    return ((c @ w.T - v) ** 2).sum() + lam * ((w - w0) ** 2).sum()


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    return MiniTokenizer(), models.text_encoder().eval(), models.unet().eval()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("lam", [0.01, 0.1, 3.0])
def test_closed_form_matches_ridge_least_squares(seed, lam):
    w0, c, v = problem(seed)
    w = closed_form_projection(w0, c, v, lam)
    # the same problem as one stacked system [C; sqrt(lam) I] W^T = [V; sqrt(lam) W0^T]
    a = torch.cat([c, lam**0.5 * torch.eye(c.shape[1], dtype=c.dtype)])
    b = torch.cat([v, lam**0.5 * w0.T])
    reference = torch.linalg.lstsq(a, b).solution.T
    torch.testing.assert_close(w, reference, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_closed_form_is_a_stationary_minimum(seed):
    w0, c, v = problem(seed)
    lam = 0.1
    w = closed_form_projection(w0, c, v, lam).requires_grad_(True)
    objective(w, w0, c, v, lam).backward()
    assert w.grad.abs().max() < 1e-9  # gradient vanishes at the minimiser
    best = float(objective(w.detach(), w0, c, v, lam))
    g = torch.Generator().manual_seed(seed + 100)
    for _ in range(20):  # a strictly convex objective: every perturbation costs
        step = 1e-3 * torch.randn(w.shape, generator=g, dtype=w.dtype)
        assert float(objective(w.detach() + step, w0, c, v, lam)) > best


def test_gradient_descent_converges_to_the_closed_form():
    w0, c, v = problem(5)
    lam = 0.5
    w = w0.clone()
    hess = 2 * (c.T @ c + lam * torch.eye(c.shape[1], dtype=c.dtype))
    step = 1 / torch.linalg.eigvalsh(hess).max()
    for _ in range(5000):
        grad = 2 * (w @ c.T - v.T) @ c + 2 * lam * (w - w0)
        w = w - step * grad
    torch.testing.assert_close(w, closed_form_projection(w0, c, v, lam), rtol=1e-7, atol=1e-7)


def test_large_lambda_leaves_the_matrix_unchanged():
    w0, c, v = problem(1)
    w = closed_form_projection(w0, c, v, 1e12)
    torch.testing.assert_close(w, w0, rtol=0, atol=1e-9)


def test_small_lambda_maps_sources_exactly_to_targets_when_possible():
    w0, c, v = problem(2, n=5, d_in=8)  # fewer keys than dimensions: an exact fit exists
    w = closed_form_projection(w0, c, v, 1e-10)
    torch.testing.assert_close(c @ w.T, v, rtol=0, atol=1e-6)


def test_closed_form_keeps_dtype_and_rejects_bad_input():
    w0, c, v = problem(0)
    assert closed_form_projection(w0.float(), c.float(), v.float(), 0.1).dtype == torch.float32
    for lam in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lam"):
            closed_form_projection(w0, c, v, lam)
    with pytest.raises(ValueError, match="contexts"):
        closed_form_projection(w0, c[:, :3], v, 0.1)
    with pytest.raises(ValueError, match="targets"):
        closed_form_projection(w0, c, v[:4], 0.1)
    with pytest.raises(ValueError, match="weight"):
        closed_form_projection(w0[0], c, v, 0.1)
    bad = c.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        closed_form_projection(w0, bad, v, 0.1)


def test_align_tokens_skips_added_words_and_shifts_padding():
    # <bos> a circle <eos>  ->  <bos> a blue circle <eos>
    assert align_tokens([26, 1, 10, 27], [26, 1, 6, 10, 27], 8) == [0, 1, 3, 4, 5, 6, 7, 7]
    assert align_tokens([26, 1, 10, 27], [26, 1, 10, 27], 6) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="no match"):
        align_tokens([26, 1, 11, 27], [26, 1, 6, 10, 27], 8)
    with pytest.raises(ValueError, match="do not fit"):
        align_tokens([26, 1, 10, 27], [26, 1, 6, 10, 27], 4)
    with pytest.raises(ValueError, match="non-empty"):
        align_tokens([], [26, 27], 4)


def test_token_ids_and_pairs(parts):
    tok, _, _ = parts
    assert token_ids(tok, "a green circle") == [26, 1, 5, 10, 27]
    with pytest.raises(ValueError, match="non-empty"):
        token_ids(tok, " ")
    assert augmented_pairs(("A rose", "A red rose"), ["A photo of"])[1] == (
        "A photo of a rose", "A photo of a red rose")


def test_projections_found_in_unet_and_minidit(parts):
    _, _, unet = parts
    found = cross_attention_projections(unet)
    assert len(found) == 14 and {p.kind for p in found} == {"key", "value"}
    assert all(".attn2.to_" in p.name for p in found)
    assert len(cross_attention_projections(unet, keys=False)) == 7
    dit = models.MiniDiT(width=32, depth=2, heads=2)
    assert [p.name for p in cross_attention_projections(dit)] == [
        "blocks.0.cross_k", "blocks.0.cross_v", "blocks.1.cross_k", "blocks.1.cross_v"]
    with pytest.raises(ValueError, match="keys, values or both"):
        cross_attention_projections(unet, keys=False, values=False)
    with pytest.raises(ValueError, match="no cross-attention"):
        cross_attention_projections(nn.Sequential(nn.Linear(3, 3)))


def test_time_edit_changes_only_cross_attention_key_value_weights(parts):
    tok, te, unet = parts
    edited = copy.deepcopy(unet)
    report = time_edit(edited, tok, te, PAIR, lam=0.1)
    changed = changed_tensors(unet.state_dict(), edited.state_dict())
    assert sorted(changed) == sorted(f"{n}.weight" for n in report.names)
    assert len(changed) == 14
    assert report.n_keys == tok.model_max_length
    assert 0 < report.fraction < 0.1 and report.seconds < 1.0
    with pytest.raises(ValueError, match="different keys"):
        changed_tensors(unet.state_dict(), {})


def test_time_edit_factors_through_one_text_state_map(parts):
    tok, te, unet = parts
    edited = copy.deepcopy(unet)
    time_edit(edited, tok, te, [PAIR, ("a square", "a green square")], lam=0.1)
    c, c_star = edit_states(tok, te, [PAIR, ("a square", "a green square")])
    m = text_state_map(c, c_star, 0.1)
    old = dict(unet.named_modules())
    for p in cross_attention_projections(edited):
        w0 = old[p.name].weight
        torch.testing.assert_close(p.module.weight, w0 @ m, rtol=1e-4, atol=1e-5)


def test_time_edit_with_tiny_lambda_sends_source_keys_to_destination_values(parts):
    tok, te, unet = parts
    edited = copy.deepcopy(unet)
    time_edit(edited, tok, te, PAIR, lam=1e-6)  # 16 keys in 64 dimensions: exactly solvable
    c, c_star = edit_states(tok, te, PAIR)
    old = dict(unet.named_modules())
    for p in cross_attention_projections(edited):
        torch.testing.assert_close(p.module(c), old[p.name](c_star), rtol=1e-3, atol=1e-3)


def test_time_edit_on_minidit_uses_normalised_states_and_keeps_biases(parts):
    tok, te, _ = parts
    torch.manual_seed(1)
    dit = models.MiniDiT(width=32, depth=2, heads=2).eval()
    edited = copy.deepcopy(dit)
    time_edit(edited, tok, te, PAIR, lam=1e-6)
    changed = changed_tensors(dit.state_dict(), edited.state_dict())
    assert sorted(changed) == sorted(f"blocks.{b}.cross_{k}.weight" for b in (0, 1) for k in "kv")
    c, c_star = edit_states(tok, te, PAIR)
    c, c_star = projection_inputs(dit, c), projection_inputs(dit, c_star)
    old = dict(dit.named_modules())
    for p in cross_attention_projections(edited):
        torch.testing.assert_close(p.module(c), old[p.name](c_star), rtol=1e-3, atol=1e-3)


def test_time_edit_rejects_bad_input(parts):
    tok, te, unet = parts
    model = copy.deepcopy(unet)
    with pytest.raises(ValueError, match="lam"):
        time_edit(model, tok, te, PAIR, lam=0)
    with pytest.raises(ValueError, match="pairs is empty"):
        time_edit(model, tok, te, [], lam=0.1)
    with pytest.raises(ValueError, match="each pair"):
        time_edit(model, tok, te, [("a circle",)], lam=0.1)
    with pytest.raises(ValueError, match="no match"):
        time_edit(model, tok, te, ("a circle", "a green square"), lam=0.1)
    with pytest.raises(ValueError, match="vocabulary"):
        time_edit(model, tok, te, ("a rose", "a red rose"), lam=0.1)
    assert not changed_tensors(unet.state_dict(), model.state_dict())


def test_token_embedding_edit_moves_one_row_and_reduces_the_mismatch(parts):
    tok, te, _ = parts
    edited = copy.deepcopy(te)
    report = token_embedding_edit(edited, tok, PAIR, "circle", steps=60, lr=0.05)
    assert report.loss_after < report.loss_before
    changed = changed_tensors(te.state_dict(), edited.state_dict())
    assert len(changed) == 1 and changed[0].endswith("embeddings.token_embedding.weight")
    diff = (te.get_input_embeddings().weight != edited.get_input_embeddings().weight).any(1)
    assert diff.nonzero().flatten().tolist() == [report.token_id]
    # prompts without the word encode bit-identically
    ids = tok(["a big square", "a ring"], padding="max_length", max_length=16,
              return_tensors="pt").input_ids
    assert torch.equal(te(ids)[0], edited(ids)[0])
    with pytest.raises(ValueError, match="does not occur"):
        token_embedding_edit(copy.deepcopy(te), tok, PAIR, "square")
    with pytest.raises(ValueError, match="steps"):
        token_embedding_edit(copy.deepcopy(te), tok, PAIR, "circle", steps=0)


def test_total_variation():
    assert total_variation([0.5, 0.5, 0], [0, 0.5, 0.5]) == pytest.approx(0.5)
    assert total_variation([1, 0], [1, 0]) == 0
    with pytest.raises(ValueError, match="equal length"):
        total_variation([1.0], [0.5, 0.5])
    with pytest.raises(ValueError, match="probability"):
        total_variation([0.7, 0.7], [0.5, 0.5])


def test_choose_lambda_takes_the_smallest_passing_value():
    lams = [0.01, 0.1, 1.0, 10.0, 100.0]
    efficacy = [1.0, 1.0, 0.9, 0.85, 0.2]
    change = [0.5, 0.3, 0.1, 0.0, 0.0]
    assert choose_lambda(lams, efficacy, change, min_efficacy=0.8, max_change=0.1) == 1.0
    assert choose_lambda(lams, efficacy, change, min_efficacy=0.8, max_change=0.0) == 10.0
    # the order of the grid does not matter
    assert choose_lambda(lams[::-1], efficacy[::-1], change[::-1], min_efficacy=0.8,
                         max_change=0.3) == 0.1  # fmt: skip
    with pytest.raises(ValueError, match="no lambda"):
        choose_lambda(lams, efficacy, change, min_efficacy=0.95, max_change=0.0)
    with pytest.raises(ValueError, match="equal length"):
        choose_lambda(lams, efficacy[:2], change, min_efficacy=0.8, max_change=0.1)
    with pytest.raises(ValueError, match="thresholds"):
        choose_lambda(lams, efficacy, change, min_efficacy=1.5, max_change=0.1)
    with pytest.raises(ValueError, match="lam must be"):
        choose_lambda([0.0], [1.0], [0.0], min_efficacy=0.5, max_change=0.5)
