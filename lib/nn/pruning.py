"""Post-training unstructured pruning of the linear and convolutional layers of a torch model.

The criteria of the pruning study of Ramesh and Zhao (2024, "Efficient Pruning of
Text-to-Image Models: Insights from Pruning Stable Diffusion"), which prunes Stable Diffusion's
text encoder and UNet separately without any retraining:

* **magnitude** (their baseline and winner): score ``S_ij = |W_ij|``;
* **Wanda** (Sun et al., 2024, "A Simple and Effective Pruning Approach for Large Language
  Models", its Eq. 1): score ``S_ij = |W_ij| * ||X_j||_2``, where ``X_j`` collects the ``j``-th
  input feature of the layer over a small calibration set; Wanda compares scores within each
  output row (its "per output" group);
* **random** scores: the sanity baseline.

A weight is removed (set to zero) when its score is among the lowest fraction ``s`` of its
comparison group: the whole layer (``group="layer"``, the usual choice for magnitude pruning)
or one output row (``group="row"``, Wanda's choice). Biases, normalisation layers and
embeddings are never pruned: only the ``weight`` of ``nn.Linear`` and ``nn.Conv2d`` modules.
A convolution's row is one output channel, its input features the ``in/groups * kh * kw``
entries of an unfolded patch (``F.unfold``), so Wanda's norms for a convolution are the exact
im2col column norms.

:class:`PrunedWeights` applies masks in place and restores the dense weights on exit, so one
model serves a whole sparsity sweep.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CRITERIA = ("magnitude", "wanda", "random")
GROUPS = ("layer", "row")


def prunable_layers(model: nn.Module, exclude: Sequence[str] = ()) -> dict[str, nn.Module]:
    """The ``nn.Linear`` and ``nn.Conv2d`` modules of ``model`` by qualified name, in order.

    ``exclude`` lists name substrings to leave out (e.g. ``("conv_in",)``). Embeddings, norms
    and biases are never included. Raises ValueError when nothing is left.
    """
    layers = {name: m for name, m in model.named_modules()
              if isinstance(m, (nn.Linear, nn.Conv2d))
              and not any(x in name for x in exclude)}  # fmt: skip
    if not layers:
        raise ValueError(f"{type(model).__name__} has no nn.Linear/nn.Conv2d layers to prune")
    return layers


def _unfold(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of input features ``(rows, in_features)``."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if module.groups != 1:
        raise ValueError("Wanda norms for grouped convolutions are not implemented")
    if isinstance(module.padding, str):
        raise ValueError("convolutions with string padding are not supported")
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                    stride=module.stride)  # (n, in*kh*kw, positions) fmt: skip
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@dataclass
class InputNorms:
    """Squared input-feature norms ``sum_rows X_j^2`` per layer, with the row count."""

    squares: dict[str, torch.Tensor]
    rows: dict[str, int]

    def norms(self) -> dict[str, torch.Tensor]:
        """``||X_j||_2`` per layer (Wanda's activation term)."""
        return {k: v.sqrt() for k, v in self.squares.items()}


@contextmanager
def recording_input_norms(layers: Mapping[str, nn.Module]) -> Iterator[InputNorms]:
    """Forward pre-hooks that accumulate each layer's squared input-feature norms.

    Everything run inside the ``with`` block is calibration data; the hooks are removed on
    exit. Use :func:`input_norms` for the one-call form.
    """
    record = InputNorms({}, {})

    def hook(name: str) -> Callable:
        def fn(module: nn.Module, args: tuple) -> None:
            cols = _unfold(module, args[0].detach()).double()
            sq = (cols**2).sum(0)
            record.squares[name] = record.squares.get(name, 0) + sq
            record.rows[name] = record.rows.get(name, 0) + cols.shape[0]

        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    try:
        yield record
    finally:
        for h in handles:
            h.remove()


def input_norms(layers: Mapping[str, nn.Module], run: Callable[[], object]) -> InputNorms:
    """Run the calibration function ``run()`` with hooks on ``layers``; their input norms.

    Raises ValueError if some layer saw no input (it would get no Wanda score).
    """
    with torch.no_grad(), recording_input_norms(layers) as record:
        run()
    missing = [n for n in layers if n not in record.squares]
    if missing:
        raise ValueError(f"calibration never reached {len(missing)} layers, e.g. {missing[:3]}")
    return record


def scores(
    layers: Mapping[str, nn.Module],
    criterion: str,
    norms: InputNorms | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Importance score of every weight, shaped like the weight (low = pruned first).

    ``"magnitude"``: ``|W|``; ``"wanda"``: ``|W_ij| * ||X_j||`` (Wanda's Eq. 1, needs ``norms``
    from :func:`input_norms`); ``"random"``: i.i.d. uniform scores from ``generator``.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if criterion == "wanda" and norms is None:
        raise ValueError("criterion 'wanda' needs the calibration input norms (norms=...)")
    out = {}
    for name, m in layers.items():
        w = m.weight.detach()
        if criterion == "magnitude":
            out[name] = w.abs()
        elif criterion == "random":
            out[name] = torch.rand(w.shape, generator=generator)
        else:
            if name not in norms.squares:
                raise ValueError(f"no calibration norms for layer {name!r}")
            x = norms.squares[name].sqrt().to(w.dtype)
            rows = w.reshape(w.shape[0], -1)
            if rows.shape[1] != x.numel():
                raise ValueError(f"layer {name!r}: {rows.shape[1]} input features but "
                                 f"{x.numel()} calibration norms")  # fmt: skip
            out[name] = (rows.abs() * x[None, :]).reshape(w.shape)
    return out


def masks(score: Mapping[str, torch.Tensor], sparsity: float,
          group: str = "layer") -> dict[str, torch.Tensor]:  # fmt: skip
    """Boolean keep-masks removing the ``floor(s * n)`` lowest scores of each group.

    ``group="layer"``: one group per layer (``n`` its weight count); ``"row"``: one group per
    output row / output channel, as Wanda compares. Ties are broken by position (stable sort),
    so the count removed is exact.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must lie in [0, 1], got {sparsity}")
    if group not in GROUPS:
        raise ValueError(f"group must be one of {GROUPS}, got {group!r}")
    out = {}
    for name, s in score.items():
        flat = s.reshape(1, -1) if group == "layer" else s.reshape(s.shape[0], -1)
        k = int(sparsity * flat.shape[1] + 1e-9)
        keep = torch.ones_like(flat, dtype=torch.bool)
        if k > 0:
            order = torch.argsort(flat, dim=1, stable=True)[:, :k]
            keep.scatter_(1, order, False)
        out[name] = keep.reshape(s.shape)
    return out


def sparsity_of(layers: Mapping[str, nn.Module]) -> float:
    """Fraction of exactly-zero weights over all ``layers``."""
    zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
    return zeros / sum(m.weight.numel() for m in layers.values())


class PrunedWeights:
    """Context manager: zero the masked weights of ``layers`` in place, restore them on exit.

    >>> with PrunedWeights(layers, keep):   # doctest: +SKIP
    ...     images = pipe.sample(prompts)
    """

    def __init__(self, layers: Mapping[str, nn.Module], keep: Mapping[str, torch.Tensor]):
        unknown = set(keep) - set(layers)
        if unknown:
            raise ValueError(f"masks for unknown layers: {sorted(unknown)[:3]}")
        for name, k in keep.items():
            if k.shape != layers[name].weight.shape:
                raise ValueError(f"mask of {name!r} has shape {tuple(k.shape)}, weight "
                                 f"{tuple(layers[name].weight.shape)}")  # fmt: skip
        self.layers, self.keep = layers, keep
        self._saved: dict[str, torch.Tensor] = {}

    def __enter__(self) -> PrunedWeights:
        with torch.no_grad():
            for name, k in self.keep.items():
                w = self.layers[name].weight
                self._saved[name] = w.detach().clone()
                w.mul_(k.to(w.dtype))
        return self

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for name, w in self._saved.items():
                self.layers[name].weight.copy_(w)
        self._saved = {}


def prune(
    layers: Mapping[str, nn.Module],
    sparsity: float,
    criterion: str = "magnitude",
    *,
    group: str | None = None,
    norms: InputNorms | None = None,
    generator: torch.Generator | None = None,
) -> PrunedWeights:
    """Masks for one criterion and sparsity, as a :class:`PrunedWeights` context.

    ``group`` defaults to each criterion's own choice: ``"row"`` for Wanda (its per-output
    comparison), ``"layer"`` for magnitude and random.
    """
    if group is None:
        group = "row" if criterion == "wanda" else "layer"
    return PrunedWeights(layers, masks(scores(layers, criterion, norms, generator), sparsity,
                                       group))  # fmt: skip
