"""Closed-form editing of a text-to-image model's cross-attention (TIME, Orgad et al., 2023).

TIME (Text-to-Image Model Editing, arXiv 2303.08084, ICCV 2023) changes what an under-specified
*source* prompt ("a pack of roses") means to a diffusion model by making it behave like a
*destination* prompt ("a pack of blue roses"). It edits only the key and value projections
``W_K``, ``W_V`` of every cross-attention layer, the only place where the denoiser reads the
text encoder's per-token states ``c``. For each projection ``W`` (old value ``W0``) and the source
prompt's token states ``c_i`` with their aligned destination states ``c_i*``, the targets are
``v_i* = W0 c_i*``, and the new matrix minimises (the paper's method section)

    sum_i || W c_i - v_i* ||^2 + lam || W - W0 ||_F^2,

whose minimiser is (normal equations of a ridge regression)

    W = (lam W0 + sum_i v_i* c_i^T) (lam I + sum_i c_i c_i^T)^{-1}.

The paper uses ``lam = 0.1`` and Stable Diffusion 1.4; its official code (``train_funcs.py``,
``apply_time.py`` in github.com/bahjat-kawar/time-diffusion) takes as keys ``c_i`` *every*
position of the padded source prompt (start token, words, end token and padding) and aligns
them with the destination as :func:`align_tokens` does. This module implements the edit for any
model whose cross-attention projections it can find (:func:`cross_attention_projections`):
``diffusers`` ``UNet2DConditionModel`` (``attn2.to_k`` / ``attn2.to_v``, Stable Diffusion's
layout) and the testbed's ``MiniDiT`` (``cross_k`` / ``cross_v``).

Two facts the chapter uses, both checked in ``tests/test_diffusion_model_editing.py``:

* Because every target is ``W0 c_i*``, the minimiser factors as ``W = W0 M`` with one matrix
  ``M = (lam I + sum_i c_i* c_i^T)(lam I + sum_i c_i c_i^T)^{-1}`` shared by all layers
  (:func:`text_state_map`): editing every ``W_K`` and ``W_V`` is the same as passing the text
  states through the linear map ``M`` before the denoiser.
* A text-side counterpart (:func:`token_embedding_edit`) moves only the source word's input
  embedding in the text encoder, by gradient descent on the same source-to-destination
  mismatch of the text states; prompts without that word are untouched by construction.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lib.diffusion.sampling import encode_prompts
from lib.diffusion.testbed.models import parameter_count

Pairs = Sequence[tuple[str, str]]


# ------------------------------------------------------------------------------ projections


@dataclass(frozen=True)
class Projection:
    """One cross-attention projection: its qualified ``name`` in the model, the ``module``
    (an ``nn.Linear`` from text width to attention width) and its ``kind``, ``"key"`` or
    ``"value"``."""

    name: str
    module: nn.Linear
    kind: str


def cross_attention_projections(
    model: nn.Module, *, keys: bool = True, values: bool = True
) -> list[Projection]:
    """The key and/or value projections of every cross-attention layer of ``model``.

    Recognised layouts: ``diffusers`` attention modules with ``is_cross_attention`` (the
    ``attn2`` of Stable Diffusion's UNet and of ``UNet2DConditionModel`` in general), whose
    projections are ``to_k`` and ``to_v``; and any module with ``cross_k`` / ``cross_v``
    linear layers (the testbed's ``MiniDiT`` blocks). Raises ValueError when neither kind is
    asked for or the model has no cross-attention projection.
    """
    if not (keys or values):
        raise ValueError("ask for keys, values or both")
    wanted = [("key", keys), ("value", values)]
    found: list[Projection] = []
    for name, module in model.named_modules():
        if getattr(module, "is_cross_attention", False) and hasattr(module, "to_k"):
            attrs = {"key": "to_k", "value": "to_v"}
        elif isinstance(getattr(module, "cross_k", None), nn.Linear):
            attrs = {"key": "cross_k", "value": "cross_v"}
        else:
            continue
        for kind, on in wanted:
            layer = getattr(module, attrs[kind])
            if on:
                if not isinstance(layer, nn.Linear):
                    raise ValueError(f"{name}.{attrs[kind]} is not an nn.Linear")
                found.append(Projection(f"{name}.{attrs[kind]}", layer, kind))
    if not found:
        raise ValueError(f"{type(model).__name__} has no cross-attention key/value projections "
                         "(expected diffusers attn2.to_k/to_v or cross_k/cross_v layers)")
    return found


@torch.no_grad()
def projection_inputs(model: nn.Module, text_states: torch.Tensor) -> torch.Tensor:
    """What the cross-attention projections of ``model`` actually receive for ``text_states``.

    Stable Diffusion 1.x's UNet feeds the text encoder's states to ``to_k``/``to_v`` unchanged
    (a UNet with an ``encoder_hid_proj`` applies it first); the testbed's ``MiniDiT`` applies a
    LayerNorm (``text_norm``) first. TIME's keys ``c_i`` are these inputs.
    """
    proj = getattr(model, "encoder_hid_proj", None)
    if proj is not None:
        text_states = proj(text_states)
    norm = getattr(model, "text_norm", None)
    if norm is not None:
        text_states = norm(text_states)
    return text_states


def changed_tensors(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    """Names of the state-dict tensors that differ in any bit (``torch.equal`` is False).

    Raises ValueError when the two state dicts do not have the same keys.
    """
    if before.keys() != after.keys():
        raise ValueError("the state dicts have different keys: "
                         f"{sorted(set(before) ^ set(after))[:5]}")  # fmt: skip
    return [k for k in before if not torch.equal(before[k], after[k])]


# ------------------------------------------------------------------------------ tokens


def token_ids(tokenizer: Any, prompt: str) -> list[int]:
    """Unpadded token ids of ``prompt`` with the start and end tokens (``tokenizer(prompt)``)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"a prompt must be a non-empty string, got {prompt!r}")
    return list(tokenizer(prompt).input_ids)


def align_tokens(source: Sequence[int], destination: Sequence[int], length: int) -> list[int]:
    """For each of the ``length`` padded positions of the source prompt, the destination
    position whose state it should take (TIME's alignment, as in the official ``apply_time.py``).

    Each source token (``source`` and ``destination`` are unpadded ids, start and end tokens
    included) is matched to the next equal token of the destination, scanning left to right,
    so the destination's extra words (the attribute, e.g. "blue") are skipped. The positions
    after the source's end token (the padding, which a causal text encoder fills with
    whole-prompt context) take the destination's following positions, the last one repeated if
    the destination runs out. Raises ValueError when the destination does not contain the
    source's tokens in order, or a prompt does not fit in ``length``.
    """
    source, destination = list(source), list(destination)
    if length < 1:
        raise ValueError(f"length must be positive, got {length}")
    if not source or not destination:
        raise ValueError("source and destination token lists must be non-empty")
    if len(source) > length or len(destination) > length:
        raise ValueError(f"prompts of {len(source)} and {len(destination)} tokens do not fit in "
                         f"{length} positions")  # fmt: skip
    index: list[int] = []
    j = 0
    for i, token in enumerate(source):
        while j < len(destination) and destination[j] != token:
            j += 1
        if j == len(destination):
            raise ValueError(f"source token {token} (position {i}) has no match in the "
                             "destination after the earlier ones: the destination prompt must "
                             "contain the source prompt's words, in order")  # fmt: skip
        index.append(j)
        j += 1
    while len(index) < length:
        index.append(min(j, length - 1))
        j += 1
    return index


def _check_pairs(pairs: Pairs | tuple[str, str]) -> list[tuple[str, str]]:
    if isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(p, str) for p in pairs):
        pairs = [pairs]
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs is empty: give at least one (source, destination) prompt pair")
    for pair in pairs:
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or not all(isinstance(p, str) and p.strip() for p in pair)):  # fmt: skip
            raise ValueError(f"each pair must be (source prompt, destination prompt), got {pair!r}")
    return [(s, d) for s, d in pairs]


def augmented_pairs(pairs: Pairs | tuple[str, str],
                    prefixes: Sequence[str] = ("A photo of", "An image of", "A picture of"),
                    ) -> list[tuple[str, str]]:  # fmt: skip
    """The pairs plus each pair behind every prefix ("A photo of a pack of roses"), the textual
    augmentations of the official code. Only for tokenizers that know the prefix words."""
    pairs = _check_pairs(pairs)
    out = list(pairs)
    for prefix in prefixes:
        for s, d in pairs:
            out.append((f"{prefix} {s[:1].lower()}{s[1:]}", f"{prefix} {d[:1].lower()}{d[1:]}"))
    return out


@torch.no_grad()
def edit_states(tokenizer: Any, text_encoder: nn.Module,
                pairs: Pairs | tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Text states of the source prompts and the aligned destination states.

    Returns ``(C, C_star)``, both ``(n_pairs * L, d)``: row ``p * L + i`` of ``C`` is the state
    of padded position ``i`` of source prompt ``p``, the same row of ``C_star`` the state of its
    aligned destination position (:func:`align_tokens`).
    """
    pairs = _check_pairs(pairs)
    sources = encode_prompts(tokenizer, text_encoder, [s for s, _ in pairs])
    destinations = encode_prompts(tokenizer, text_encoder, [d for _, d in pairs])
    length = sources.shape[1]
    rows, targets = [], []
    for p, (s, d) in enumerate(pairs):
        index = align_tokens(token_ids(tokenizer, s), token_ids(tokenizer, d), length)
        rows.append(sources[p])
        targets.append(destinations[p, index])
    return torch.cat(rows), torch.cat(targets)


# ------------------------------------------------------------------------------ closed form


def _check_lam(lam: float) -> float:
    lam = float(lam)
    if not math.isfinite(lam) or lam <= 0:
        raise ValueError(f"lam must be a positive finite number, got {lam}")
    return lam


def closed_form_projection(weight: torch.Tensor, contexts: torch.Tensor, targets: torch.Tensor,
                           lam: float = 0.1) -> torch.Tensor:  # fmt: skip
    """TIME's closed-form update of one projection matrix (the paper's method section).

    Minimises ``sum_i ||W c_i - v_i*||^2 + lam ||W - W0||_F^2`` over ``W``: returns
    ``(lam W0 + sum_i v_i* c_i^T)(lam I + sum_i c_i c_i^T)^{-1}``, computed in float64 by solving
    the symmetric positive-definite system rather than forming the inverse, and cast back to
    ``weight``'s dtype. ``weight`` is ``W0`` ``(out, in)``, ``contexts`` the keys ``c_i`` as rows
    ``(n, in)``, ``targets`` the ``v_i*`` as rows ``(n, out)``; ``lam > 0``.
    """
    lam = _check_lam(lam)
    if weight.ndim != 2:
        raise ValueError(f"weight must be a matrix (out, in), got shape {tuple(weight.shape)}")
    out_dim, in_dim = weight.shape
    if contexts.ndim != 2 or contexts.shape[1] != in_dim:
        raise ValueError(f"contexts must be (n, {in_dim}), got {tuple(contexts.shape)}")
    if targets.ndim != 2 or targets.shape != (contexts.shape[0], out_dim):
        raise ValueError(f"targets must be ({contexts.shape[0]}, {out_dim}), "
                         f"got {tuple(targets.shape)}")  # fmt: skip
    for name, t in (("weight", weight), ("contexts", contexts), ("targets", targets)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    w0 = weight.detach().double()
    c = contexts.detach().double().to(w0.device)
    v = targets.detach().double().to(w0.device)
    gram = lam * torch.eye(in_dim, dtype=torch.float64, device=w0.device) + c.T @ c
    rhs = lam * w0 + v.T @ c  # (out, in); W gram = rhs, gram symmetric
    return torch.linalg.solve(gram, rhs.T).T.to(weight.dtype)


def text_state_map(contexts: torch.Tensor, destination_states: torch.Tensor,
                   lam: float = 0.1) -> torch.Tensor:  # fmt: skip
    """The matrix ``M = (lam I + sum_i c_i* c_i^T)(lam I + sum_i c_i c_i^T)^{-1}`` ``(d, d)``.

    With the targets ``v_i* = W0 c_i*`` of TIME, the closed form of every projection is
    ``W0 M``: the edit equals one linear map of the text states, applied before all layers.
    It is :func:`closed_form_projection` of the identity with targets ``c_i*``.
    """
    d = contexts.shape[-1]
    eye = torch.eye(d, dtype=contexts.dtype, device=contexts.device)
    return closed_form_projection(eye, contexts, destination_states, lam)


@dataclass
class EditReport:
    """What :func:`time_edit` did: the edited projections' names, how many parameters they
    hold and which fraction of the model that is, the number of key vectors ``c_i`` used, the
    regularisation ``lam`` and the wall time of the whole edit (encoding included)."""

    names: list[str]
    edited_parameters: int
    fraction: float
    n_keys: int
    lam: float
    seconds: float
    pairs: list[tuple[str, str]] = field(default_factory=list)


def time_edit(
    model: nn.Module,
    tokenizer: Any,
    text_encoder: nn.Module,
    pairs: Pairs | tuple[str, str],
    *,
    lam: float = 0.1,
    keys: bool = True,
    values: bool = True,
) -> EditReport:
    """Apply TIME in place: edit the cross-attention key/value projections of ``model`` so that
    the source prompts behave like their destinations (copy the model first to keep the
    original, e.g. ``copy.deepcopy``).

    ``pairs`` is one ``(source, destination)`` pair or a list of them (augmentations, several
    edits at once); every padded position of every source prompt contributes a key ``c_i``
    (:func:`edit_states`, :func:`projection_inputs`), the targets are the unedited projections of
    the aligned destination states, and each matrix gets :func:`closed_form_projection` with
    ``lam``. Biases, where a projection has one, are left as they are (the targets exclude
    them). The paper edits values and keys (``keys=False`` edits values only, as the official
    code does without ``--with_to_k``).
    """
    lam = _check_lam(lam)
    pairs = _check_pairs(pairs)
    start = time.perf_counter()
    projections = cross_attention_projections(model, keys=keys, values=values)
    c, c_star = edit_states(tokenizer, text_encoder, pairs)
    c, c_star = projection_inputs(model, c), projection_inputs(model, c_star)
    with torch.no_grad():
        for proj in projections:
            w0 = proj.module.weight
            targets = c_star.to(w0) @ w0.T
            proj.module.weight.copy_(closed_form_projection(w0, c.to(w0), targets, lam))
    seconds = time.perf_counter() - start
    edited = sum(p.module.weight.numel() for p in projections)
    return EditReport([p.name for p in projections], edited, edited / parameter_count(model),
                      c.shape[0], lam, seconds, pairs)  # fmt: skip


# ------------------------------------------------------------------------------ text side


@dataclass
class EmbeddingEditReport:
    """What :func:`token_embedding_edit` did: the edited ``word`` and its token id, the mean
    squared state mismatch before and after, the optimiser steps and the wall time."""

    word: str
    token_id: int
    loss_before: float
    loss_after: float
    steps: int
    seconds: float


def token_embedding_edit(
    text_encoder: nn.Module,
    tokenizer: Any,
    pairs: Pairs | tuple[str, str],
    word: str,
    *,
    steps: int = 200,
    lr: float = 0.05,
) -> EmbeddingEditReport:
    """Text-side baseline: move the input embedding of ``word`` (in place) so that the text
    encoder's states of each source prompt approach the aligned destination states.

    The objective is TIME's mismatch, measured on the text states instead of the keys and values:
    the mean over pairs and padded positions of ``||E'(source)_i - E(destination)_{a(i)}||^2``,
    with ``a`` from :func:`align_tokens`, the targets fixed from the unedited encoder ``E``, and
    only the row of ``word`` in the token-embedding table free (Adam, ``steps`` steps, rate
    ``lr``). The denoiser is untouched, and prompts without ``word`` encode exactly as before.
    Raises ValueError when ``word`` is not a single token of every source prompt.
    """
    pairs = _check_pairs(pairs)
    if steps < 1 or not lr > 0:
        raise ValueError(f"steps must be >= 1 and lr > 0, got {steps}, {lr}")
    ids = [i for i in tokenizer(word, add_special_tokens=False).input_ids]
    if len(ids) != 1:
        raise ValueError(f"{word!r} is {len(ids)} tokens; the edit needs a single-token word")
    token = int(ids[0])
    for s, _ in pairs:
        if token not in token_ids(tokenizer, s):
            raise ValueError(f"{word!r} does not occur in the source prompt {s!r}")
    start = time.perf_counter()
    _, c_star = edit_states(tokenizer, text_encoder, pairs)
    source_ids = tokenizer([s for s, _ in pairs], padding="max_length",
                           max_length=tokenizer.model_max_length, truncation=True,
                           return_tensors="pt").input_ids  # fmt: skip
    table = text_encoder.get_input_embeddings().weight
    name = next(n for n, p in text_encoder.named_parameters() if p is table)
    row = table[token].detach().clone().requires_grad_(True)
    mask = torch.zeros(table.shape[0], 1, dtype=table.dtype, device=table.device)
    mask[token] = 1.0
    base = table.detach()
    opt = torch.optim.Adam([row], lr=lr)
    device = table.device

    def loss_of(r: torch.Tensor) -> torch.Tensor:
        weight = base * (1 - mask) + mask * r[None]
        states = torch.func.functional_call(text_encoder, {name: weight},
                                            (source_ids.to(device),))[0]  # fmt: skip
        return ((states.reshape(-1, states.shape[-1]) - c_star.to(states)) ** 2).sum(-1).mean()

    with torch.no_grad():
        loss_before = float(loss_of(row))
    with torch.enable_grad():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = loss_of(row)
            loss.backward()
            opt.step()
    with torch.no_grad():
        table[token].copy_(row.detach())
        loss_after = float(loss_of(row))
    return EmbeddingEditReport(word, token, loss_before, loss_after, steps,
                               time.perf_counter() - start)  # fmt: skip


# ------------------------------------------------------------------------------ measuring


def total_variation(p: Sequence[float] | torch.Tensor, q: Sequence[float] | torch.Tensor) -> float:
    """Total-variation distance ``0.5 sum |p - q|`` between two distributions on the same
    classes (each non-negative, summing to 1 within 1e-6)."""
    p_t = torch.as_tensor(p, dtype=torch.float64).reshape(-1)
    q_t = torch.as_tensor(q, dtype=torch.float64).reshape(-1)
    if p_t.shape != q_t.shape or p_t.numel() == 0:
        raise ValueError(f"p and q must be non-empty and of equal length, got {p_t.numel()}, "
                         f"{q_t.numel()}")  # fmt: skip
    for name, t in (("p", p_t), ("q", q_t)):
        if (t < 0).any() or abs(float(t.sum()) - 1) > 1e-6:
            raise ValueError(f"{name} is not a probability distribution")
    return float(0.5 * (p_t - q_t).abs().sum())


def choose_lambda(lams: Sequence[float], efficacy: Sequence[float], change: Sequence[float], *,
                  min_efficacy: float, max_change: float) -> float:  # fmt: skip
    """The smallest ridge weight ``lam`` whose *validation* scores meet both thresholds.

    ``efficacy[k]`` is the fraction of validation samples (prompts related to the edited
    concept) showing the new attribute after an edit with ``lams[k]``, ``change[k]`` the largest
    colour change (total variation to the unedited model) over the validation prompts about
    unrelated concepts. Among the ``lam`` with ``efficacy >= min_efficacy`` and ``change <=
    max_change``, the smallest is returned: the strongest edit that still leaves unrelated
    prompts alone. This is a model-selection rule for TIME's ``lam`` (the paper fixes it at 0.1);
    score it on prompts disjoint from those the edit is then evaluated on.
    Raises ValueError for mismatched or empty inputs, and when no ``lam`` qualifies.
    """
    lams_t = [_check_lam(x) for x in lams]
    if not lams_t or len(efficacy) != len(lams_t) or len(change) != len(lams_t):
        raise ValueError(f"lams, efficacy and change must be non-empty and of equal length, got "
                         f"{len(lams_t)}, {len(efficacy)}, {len(change)}")  # fmt: skip
    if not 0.0 <= min_efficacy <= 1.0 or not 0.0 <= max_change <= 1.0:
        raise ValueError(f"thresholds must lie in [0, 1], got {min_efficacy}, {max_change}")
    passing = [lam for lam, e, c in zip(lams_t, efficacy, change)
               if e >= min_efficacy and c <= max_change]  # fmt: skip
    if not passing:
        raise ValueError(f"no lambda in {lams_t} reaches validation efficacy >= {min_efficacy} "
                         f"with colour change <= {max_change}")  # fmt: skip
    return min(passing)
