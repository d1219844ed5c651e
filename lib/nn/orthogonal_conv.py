"""Orthogonal convolutional layers: existence, the regulariser L_orth, and certification.

Achour, Malgouyres and Mamalet, *Existence, Stability and Scalability of Orthogonal
Convolutional Neural Networks* (JMLR 2022, arXiv:2108.05623).

Conventions (those of the paper): a kernel ``K`` has shape ``(M, C, k, k)`` (output channels,
input channels, spatial size, as a ``torch.nn.Conv2d`` weight); the layer maps an input of
``C x SN x SN`` to an output of ``M x N x N`` with stride ``S`` (for circular and zero-padded
"same" boundaries with odd ``k``). The layer is the linear map

    Y[m, i, j] = sum_{c, a, b} K[m, c, a, b] X[c, S i + a - p, S j + b - p]

(a cross-correlation, as in ``torch.nn.functional.conv2d``), with indices taken modulo ``SN``
for the ``"circular"`` boundary, out-of-range pixels read as zero for ``"zeros"`` (``p =
(k - 1) // 2``) and no padding at all for ``"valid"`` (``p = 0``, fewer outputs). Its matrix
``𝒦`` is row orthogonal (RO) when ``𝒦 𝒦ᵀ = I`` (possible only if ``M <= C S²``) and column
orthogonal (CO) when ``𝒦ᵀ 𝒦 = I`` (only if ``M >= C S²``).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

BOUNDARIES = ("circular", "zeros", "valid")


# --------------------------------------------------------------------------------------------
# input checks


def _check_shape(M: int, C: int, k: int, S: int) -> None:
    for name, value in dict(M=M, C=C, k=k, S=S).items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")


def _check_boundary(boundary: str) -> None:
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")


def _kernel_dims(K: np.ndarray | torch.Tensor) -> tuple[int, int, int]:
    if K.ndim != 4 or K.shape[2] != K.shape[3]:
        raise ValueError(f"a kernel has shape (M, C, k, k); got {tuple(K.shape)}")
    M, C, k, _ = (int(d) for d in K.shape)
    if min(M, C, k) < 1:
        raise ValueError(f"a kernel needs M, C, k >= 1; got shape {tuple(K.shape)}")
    return M, C, k


def _check_stride(S: int) -> None:
    if isinstance(S, bool) or not isinstance(S, (int, np.integer)) or S < 1:
        raise ValueError(f"the stride must be a positive integer, got {S!r}")


def _check_N(N: int) -> None:
    if isinstance(N, bool) or not isinstance(N, (int, np.integer)) or N < 1:
        raise ValueError(f"the output size N must be a positive integer, got {N!r}")


# --------------------------------------------------------------------------------------------
# existence (Section 3)


def orthogonality_kind(M: int, C: int, S: int) -> str:
    """``"RO"`` when ``M < C S²``, ``"CO"`` when ``M > C S²``, ``"square"`` when equal.

    The layer's matrix is ``M N² x C S² N²``: only its smaller side can be orthonormal, so a
    layer can be row orthogonal only if ``M <= C S²`` and column orthogonal only if
    ``M >= C S²`` (the paper's Section 2 definitions; in the square case both coincide).
    """
    _check_shape(M, C, 1, S)
    if M < C * S**2:
        return "RO"
    if M > C * S**2:
        return "CO"
    return "square"


@dataclass(frozen=True)
class Existence:
    """Whether an orthogonal convolution exists for one architecture, and why."""

    exists: bool | None  # None: undecided (small image, see orthogonal_conv_exists)
    kind: str  # "RO", "CO" or "square"
    reason: str
    window: int  # side of the window a (possibly degenerate) orthogonal kernel is built on
    offset: int  # where that window starts inside the k x k kernel


def orthogonal_conv_exists(
    M: int, C: int, k: int, S: int, boundary: str = "circular", N: int | None = None
) -> Existence:
    """Necessary and sufficient conditions for an orthogonal convolutional layer to exist.

    Circular boundary (the paper's main existence theorem, Section 3; the same test is coded
    in deel-lip's ``LorthRegularizer``): with ``M <= C S²`` (RO) an orthogonal layer exists
    iff ``M <= C k²``; with ``M >= C S²`` (CO) iff ``k >= S``. Here these hold for every image
    size: the necessity is a count of taps per row or of unread pixels, and the witness of
    :func:`orthogonal_kernel_example` works for all ``N``.

    Non-circular boundaries (the paper shows they are restrictive; the exact conditions below
    are this module's derivation for its conventions, checked numerically in the tests, and
    they are **large-image** conditions: they hold once :func:`size_assumption_holds`). The
    rows (RO) or columns (CO) that meet the border lose kernel taps; requiring their norms to
    equal those of interior rows forces the lost taps to vanish, which leaves only kernels
    supported on a small window whose patches do not overlap:

    * ``"zeros"`` ("same", ``p = (k - 1) // 2``): RO iff ``M <= C w²`` with
      ``w = min(k - p, S)``; CO iff ``k - p >= S``.
    * ``"valid"``: RO iff ``M <= C k²`` (no row meets the border, as in the circular case);
      CO iff ``k == S`` (otherwise the border pixels are seen by too few outputs).

    With ``N`` given, the verdict is for that output size: the large-image one where
    :func:`size_assumption_holds`, otherwise ``True`` if :func:`tiling_witness` finds an
    orthogonal kernel and ``None`` (undecided) if it does not.

    ``window`` and ``offset`` say where :func:`orthogonal_kernel_example` puts a kernel that
    proves existence.
    """
    if N is not None:
        large = orthogonal_conv_exists(M, C, k, S, boundary)
        if size_assumption_holds(M, C, k, S, N, boundary):
            return large
        if tiling_witness(M, C, k, S, N, boundary) is not None:
            return replace(large, exists=True,
                           reason=f"at N = {N} the image is too small for the border argument, "
                                  "and a tap-tiling kernel is orthogonal")
        return replace(large, exists=None,
                       reason=f"at N = {N} the image is too small for the border argument and "
                              "no tap tiling is orthogonal: undecided")
    _check_shape(M, C, k, S)
    _check_boundary(boundary)
    kind = orthogonality_kind(M, C, S)
    rows_ok = kind in ("RO", "square")  # RO conditions apply
    if boundary == "circular" or (boundary == "valid" and rows_ok):
        if rows_ok:
            w = min(k, S)
            ok = M <= C * w * w
            reason = f"RO needs M <= C k² ({M} <= {C * k * k})"
            if kind == "square":
                ok = k >= S
                reason = f"M = C S² needs k >= S ({k} >= {S})"
        else:
            w, ok = S, k >= S
            reason = f"CO needs k >= S ({k} >= {S})"
        return Existence(ok, kind, reason + (" holds" if ok else " fails"), w, 0)
    if boundary == "valid":  # CO with no padding
        ok = k == S
        reason = f"valid CO needs k == S ({k} == {S}) " + ("holds" if ok else "fails")
        return Existence(ok, kind, reason, S, 0)
    p = (k - 1) // 2
    if rows_ok and kind == "RO":
        w = min(k - p, S)
        ok = M <= C * w * w
        reason = f"zero-padded RO needs M <= C w², w = min(k - p, S) = {w} ({M} <= {C * w * w})"
    else:
        w = S
        ok = k - p >= S
        reason = f"zero-padded {kind} needs k - p >= S ({k - p} >= {S})"
    return Existence(ok, kind, reason + (" holds" if ok else " fails"), w, p)


def _taps_seen_1d(
    k: int, S: int, N: int, boundary: str
) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """One axis of the layer: for each output position, the taps that land inside the image;
    for each input pixel, the ``(position, tap)`` pairs that read it. The 2-D layer is the
    product of two such axes."""
    L, n = S * N, _output_size(N, k, S, boundary)
    p = (k - 1) // 2 if boundary == "zeros" else 0
    seen: list[list[int]] = [[] for _ in range(n)]
    readers: list[list[tuple[int, int]]] = [[] for _ in range(L)]
    for i in range(n):
        for a in range(k):
            x = S * i + a - p
            if boundary == "circular":
                x %= L
            elif not 0 <= x < L:
                continue
            seen[i].append(a)
            readers[x].append((i, a))
    return seen, readers


def _shape_kind(M: int, C: int, k: int, S: int, N: int, boundary: str) -> str:
    """``"RO"``, ``"CO"`` or ``"square"`` from the actual shape of the matrix at output size
    ``N`` (for "valid" it can differ from :func:`orthogonality_kind`: fewer outputs)."""
    n = _output_size(N, k, S, boundary)
    rows, cols = M * n * n, C * (S * N) ** 2
    return "RO" if rows < cols else ("CO" if rows > cols else "square")


def size_assumption_holds(
    M: int, C: int, k: int, S: int, N: int, boundary: str = "circular"
) -> bool:
    """Whether the image is large enough for the border argument behind the non-circular
    conditions of :func:`orthogonal_conv_exists` (this book's derivation, not the paper's text).

    The necessity half compares a row (RO) or column (CO) that meets the border with an
    *interior* one that sees every tap of the kernel (RO) or every tap of its stride class (CO):
    equal norms force the taps the border one misses to vanish. So it needs, per axis,

    * circular: nothing (no border; the conditions hold for every ``N >= 1``);
    * "valid", RO: nothing (no row meets the border);
    * "valid", CO: an interior pixel in every stride class (unless ``k < S``: then some pixels
      are never read at any size), and the matrix still taller than wide at this ``N``;
    * "zeros", RO or square: an output position whose window lies inside the image;
    * "zeros", CO: an interior pixel in every stride class that has taps.

    Below these sizes orthogonal layers can exist that the large-image conditions rule out
    (e.g. ``(M, C, k, S) = (5, 1, 3, 1)``, "valid", ``N = 4``: see :func:`tiling_witness`).
    """
    _check_shape(M, C, k, S)
    _check_boundary(boundary)
    _check_N(N)
    if _output_size(N, k, S, boundary) < 1:
        raise ValueError(f"input size S N = {S * N} is smaller than the kernel size k = {k}")
    if boundary == "circular":
        return True
    kind = orthogonality_kind(M, C, S)
    seen, readers = _taps_seen_1d(k, S, N, boundary)
    if kind == "CO" and _shape_kind(M, C, k, S, N, boundary) != "CO":
        return False
    if boundary == "valid" and kind != "CO":
        return True
    if boundary == "zeros" and kind != "CO":
        return any(len(taps) == k for taps in seen)
    if boundary == "valid" and k < S:
        return True
    shift = (k - 1) // 2 if boundary == "zeros" else 0
    for r in range(S):
        taps = [a for a in range(k) if a % S == r]
        if not taps:
            continue
        pixels = [x for x in range(S * N) if (x + shift) % S == r]
        if not any(len(readers[x]) == len(taps) for x in pixels):
            return False
    return True


def tiling_witness(
    M: int,
    C: int,
    k: int,
    S: int,
    N: int,
    boundary: str = "circular",
    rng: np.random.Generator | None = None,
) -> np.ndarray | None:
    """Search for a *tap-tiling* orthogonal kernel at output size ``N``, or return ``None``.

    A tiling keeps the taps of a subset ``T`` of ``{0, ..., k-1}`` in each axis (``T x T`` in
    2-D) and zeroes the rest, such that the patches of different outputs never share a pixel
    and every output sees all of ``T`` (row-orthogonal shape), or every pixel is read exactly
    once (column-orthogonal shape). Then the layer is orthogonal iff the ``M x C |T|²`` block
    on ``T x T`` is: a random orthonormal block is placed there. This is the constructive half
    of the existence conditions, found by exhaustive search over the ``2^k`` subsets instead
    of being read off a formula; it also finds the small-image constructions the large-image
    conditions miss (the four corner taps of a 3 x 3 kernel on a 4 x 4 "valid" image).
    """
    _check_shape(M, C, k, S)
    _check_boundary(boundary)
    _check_N(N)
    if _output_size(N, k, S, boundary) < 1:
        raise ValueError(f"input size S N = {S * N} is smaller than the kernel size k = {k}")
    p = (k - 1) // 2 if boundary == "zeros" else 0
    L, n = S * N, _output_size(N, k, S, boundary)
    shape = _shape_kind(M, C, k, S, N, boundary)
    rng = np.random.default_rng(0) if rng is None else rng
    for size in range(k, 0, -1):
        for T in itertools.combinations(range(k), size):
            cols = C * size * size
            pixels = []
            for i in range(n):
                for a in T:
                    x = S * i + a - p
                    x = x % L if boundary == "circular" else x
                    pixels.append(x if 0 <= x < L else None)
            inside = [x for x in pixels if x is not None]
            if shape in ("RO", "square"):
                ok = M <= cols and None not in pixels and len(set(pixels)) == len(pixels)
            else:
                ok = M >= cols and sorted(inside) == list(range(L))
            if not ok:
                continue
            q, _ = np.linalg.qr(rng.normal(size=(max(M, cols), min(M, cols))))
            block = q.T if M <= cols else q
            K = np.zeros((M, C, k, k))
            idx = np.array(T)
            K[:, :, idx[:, None], idx[None, :]] = block.reshape(M, C, size, size)
            return K
    return None


def orthogonal_kernel_example(
    M: int,
    C: int,
    k: int,
    S: int,
    boundary: str = "circular",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """A kernel that makes the layer orthogonal, when :func:`orthogonal_conv_exists` says one
    exists: a random orthonormal ``M x C w²`` matrix placed on a ``w x w`` window (``w <= S``,
    so the patches of different outputs do not overlap and orthogonality reduces to that of
    the small matrix). It works at every image size. This is the constructive half of the
    large-image conditions; the regulariser finds non-degenerate orthogonal kernels as well
    (circular case).
    """
    info = orthogonal_conv_exists(M, C, k, S, boundary)
    if not info.exists:
        raise ValueError(f"no orthogonal convolution exists: {info.reason}")
    rng = np.random.default_rng(0) if rng is None else rng
    w, o = info.window, info.offset
    rows, cols = M, C * w * w
    q, _ = np.linalg.qr(rng.normal(size=(max(rows, cols), min(rows, cols))))
    block = q.T if rows <= cols else q  # orthonormal rows (RO) or columns (CO)
    K = np.zeros((M, C, k, k))
    K[:, :, o : o + w, o : o + w] = block.reshape(M, C, w, w)
    return K


# --------------------------------------------------------------------------------------------
# the layer as a matrix, and its singular values


def _output_size(N: int, k: int, S: int, boundary: str) -> int:
    if boundary == "valid":
        return (S * N - k) // S + 1
    return N


def _conv_index(M: int, C: int, k: int, S: int, N: int, boundary: str):
    """Row, column and kernel-entry indices of the nonzeros of the layer's matrix."""
    L = S * N
    n = _output_size(N, k, S, boundary)
    if n < 1:
        raise ValueError(f"input size S N = {L} is smaller than the kernel size k = {k}")
    p = (k - 1) // 2 if boundary == "zeros" else 0
    m, c, a, b, i, j = np.meshgrid(
        np.arange(M), np.arange(C), np.arange(k), np.arange(k), np.arange(n), np.arange(n),
        indexing="ij",
    )
    x, y = S * i + a - p, S * j + b - p
    if boundary == "circular":
        x, y, keep = x % L, y % L, np.ones(x.shape, bool)
    else:
        keep = (x >= 0) & (x < L) & (y >= 0) & (y < L)
    rows = (m * n + i) * n + j
    cols = (c * L + x) * L + y
    entry = ((m * C + c) * k + a) * k + b
    return rows[keep], cols[keep], entry[keep], (M * n * n, C * L * L)


def conv_matrix(
    K: np.ndarray | torch.Tensor, N: int, stride: int = 1, boundary: str = "circular"
) -> np.ndarray | torch.Tensor:
    """The dense matrix ``𝒦`` of the layer on ``C x SN x SN`` inputs (rows: output pixels,
    columns: input pixels, channel-major). Differentiable when ``K`` is a torch tensor (used
    by the dense-penalty baseline); fine up to a few thousand rows and columns.
    """
    M, C, k = _kernel_dims(K)
    _check_stride(stride)
    _check_N(N)
    _check_boundary(boundary)
    rows, cols, entry, shape = _conv_index(M, C, k, stride, N, boundary)
    if isinstance(K, torch.Tensor):
        out = K.new_zeros(shape)
        idx = (torch.as_tensor(rows), torch.as_tensor(cols))
        return out.index_put(idx, K.reshape(-1)[torch.as_tensor(entry)], accumulate=True)
    out = np.zeros(shape)
    np.add.at(out, (rows, cols), np.asarray(K, float).reshape(-1)[entry])
    return out


def singular_values_dense(
    K: np.ndarray, N: int, stride: int = 1, boundary: str = "circular"
) -> np.ndarray:
    """All ``min(rows, cols)`` singular values of :func:`conv_matrix`, descending (the exact
    check, for small sizes)."""
    A = conv_matrix(np.asarray(K, float), N, stride, boundary)
    G = A @ A.T if A.shape[0] <= A.shape[1] else A.T @ A
    eig = np.clip(np.linalg.eigvalsh(G), 0, None)
    return np.sqrt(eig)[::-1]


def singular_values_fft(K: np.ndarray, N: int, stride: int = 1) -> np.ndarray:
    """Singular values of the circular strided layer from N² small SVDs, descending.

    Rearranging the input into ``C S²`` polyphase channels of size ``N x N`` (a permutation,
    so singular values are unchanged) turns the strided layer into a stride-1 circular
    convolution with kernel ``K̃[m, (c, r, s), q, t] = K[m, c, S q + r, S t + s]``. A circular
    convolution is block-diagonalised by the 2-D DFT (Sedghi, Gupta and Long, 2019), so its
    singular values are those of the ``M x C S²`` matrices ``Σ_{q,t} K̃[:, :, q, t]
    e^{2iπ(uq + vt)/N}``, one per frequency ``(u, v)``. Cost ``O(N² M C S² min(M, C S²))``
    instead of a dense SVD of an ``M N² x C S² N²`` matrix.
    """
    M, C, k = _kernel_dims(K)
    _check_stride(stride)
    _check_N(N)
    S = stride
    kq = -(-k // S)  # taps per polyphase component, ceil(k / S)
    Kp = np.zeros((M, C, kq * S, kq * S))
    Kp[:, :, :k, :k] = np.asarray(K, float)
    # K̃[m, c, r, s, q, t] = K[m, c, S q + r, S t + s]
    Kt = Kp.reshape(M, C, kq, S, kq, S).transpose(0, 1, 3, 5, 2, 4).reshape(M, C * S * S, kq, kq)
    grid = np.zeros((M, C * S * S, N, N))
    q = np.arange(kq) % N  # taps wrap around when the image is smaller than the kernel
    for a in range(kq):
        for b in range(kq):
            grid[:, :, q[a], q[b]] += Kt[:, :, a, b]
    P = np.fft.fft2(grid, axes=(2, 3)).transpose(2, 3, 0, 1)  # (N, N, M, C S²)
    return np.sort(np.linalg.svd(P, compute_uv=False).ravel())[::-1]


def conv_singular_values(
    K: np.ndarray, N: int, stride: int = 1, boundary: str = "circular"
) -> np.ndarray:
    """Singular values of the layer: by FFT for the circular boundary, densely otherwise."""
    _check_boundary(boundary)
    if boundary == "circular":
        return singular_values_fft(K, N, stride)
    return singular_values_dense(K, N, stride, boundary)


def orthogonality_errors(
    K: np.ndarray, N: int, stride: int = 1, boundary: str = "circular"
) -> dict[str, float]:
    """Orthogonality errors of the layer on ``C x SN x SN`` inputs.

    With ``G`` the smaller Gram matrix (``𝒦 𝒦ᵀ`` when the layer has fewer outputs than
    inputs, ``𝒦ᵀ 𝒦`` otherwise) and ``σ`` the singular values of ``𝒦``:
    ``frobenius = ||G - I||_F² = Σ (σ² - 1)²`` and ``spectral = ||G - I||_2 = max |σ² - 1|``
    (the paper's ``err_F`` and ``err_s`` of Section 4), plus ``sigma_min`` and ``sigma_max``.
    """
    s = conv_singular_values(K, N, stride, boundary)
    d = s**2 - 1
    return dict(
        frobenius=float(np.sum(d**2)),
        spectral=float(np.max(np.abs(d))),
        sigma_min=float(s.min()),
        sigma_max=float(s.max()),
    )


# --------------------------------------------------------------------------------------------
# the regulariser (Section 4)


def l_orth_padding(k: int, S: int) -> int:
    """Zero padding of the kernel self-convolution: the largest multiple of ``S`` not above
    ``k - 1``, so that every lag at which two strided patches overlap is computed once."""
    _check_shape(1, 1, k, S)
    return ((k - 1) // S) * S


def l_orth(
    K: np.ndarray | torch.Tensor, stride: int = 1, mode: str | None = None
) -> torch.Tensor | float:
    """The orthogonality regulariser of Wang et al. (2020) as analysed in the paper (Sec. 4).

    ``L_orth(K) = || conv(K, K, padding P, stride S) - I_r0 ||_F²`` with ``P`` from
    :func:`l_orth_padding`: the kernel is convolved with itself (each of its ``M`` filters,
    zero-padded by ``P``, treated as a ``C``-channel image), giving an
    ``M x M x (2P/S + 1) x (2P/S + 1)`` array of inner products between filters at every
    strided overlap, compared with the identity at the central lag (``I_r0``). Its cost
    depends on ``M, C, k, S`` only, never on the image size.

    ``mode="RO"`` returns this quantity; ``mode="CO"`` subtracts ``M - C S²``, the value that
    makes it ``||𝒦ᵀ 𝒦 - I||_F² / N²`` in the column-orthogonal case (the two Gram matrices
    differ by ``(M - C S²) N²`` in squared Frobenius norm). ``mode=None`` picks RO when
    ``M <= C S²`` and CO otherwise. A torch input gives a differentiable torch scalar; a
    numpy input gives a float (computed in float64).
    """
    M, C, k = _kernel_dims(K)
    _check_stride(stride)
    if mode is None:
        mode = "RO" if M <= C * stride**2 else "CO"
    if mode not in ("RO", "CO"):
        raise ValueError(f"mode must be 'RO', 'CO' or None, got {mode!r}")
    as_float = not isinstance(K, torch.Tensor)
    W = torch.as_tensor(np.asarray(K, float)) if as_float else K
    P = l_orth_padding(k, stride)
    gram = F.conv2d(W, W, stride=stride, padding=P)  # (M, M, 2P/S + 1, 2P/S + 1)
    target = torch.zeros_like(gram)
    centre = P // stride
    target[:, :, centre, centre] = torch.eye(M, dtype=W.dtype, device=W.device)
    value = ((gram - target) ** 2).sum()
    if mode == "CO":
        value = value - (M - C * stride**2)
    return float(value) if as_float else value


def spectral_bound(L: float, k: int, S: int) -> float:
    """An image-size-free bound on the RO spectral error from ``L_orth``.

    ``𝒦 𝒦ᵀ - I`` is a stride-1 circular convolution whose kernel is
    ``conv(K, K, P, S) - I_r0`` (``(2⌊(k-1)/S⌋ + 1)²`` taps of ``M x M`` matrices). Its
    spectral norm is at most the sum of the taps' spectral norms, hence at most
    ``(2⌊(k-1)/S⌋ + 1) sqrt(L_orth)`` by Cauchy-Schwarz: the shape of the paper's Section 4
    stability bound (its exact constants may differ; this one is derived in the chapter).
    """
    if L < 0:
        raise ValueError(f"L_orth is a squared norm, got {L}")
    _check_shape(1, 1, k, S)
    return (2 * ((k - 1) // S) + 1) * math.sqrt(L)


def paper_spectral_bound(L: float, M: int, C: int, k: int, S: int) -> float:
    """The spectral-error bound in the form deel-lip's ``Lorth`` code carries it.

    deel-lip (the library of the paper's third author's institute, whose ``LorthRegularizer``
    cites the paper) stores a constant ``alpha = M (2⌊(k-1)/S⌋ + 1)²`` in the RO case and
    ``alpha = C (2k - 1)²`` in the CO case (``_alphaNormSpectral``); we read it as the paper's
    Section 4 bound ``err_s <= sqrt(alpha L)``, with ``L = L_orth`` (RO) or
    ``L_orth - (M - C S²)`` (CO; the square case takes the smaller constant). We could not
    check this reading against the paper's text; the chapter checks the bound numerically.
    For RO it is looser than :func:`spectral_bound` by ``sqrt(M)``.
    """
    if L < 0:
        raise ValueError(f"L_orth is a squared norm, got {L}")
    _check_shape(M, C, k, S)
    alphas = []
    if M <= C * S**2:
        alphas.append(M * (2 * ((k - 1) // S) + 1) ** 2)
    if M >= C * S**2:
        alphas.append(C * (2 * k - 1) ** 2)
    return math.sqrt(min(alphas) * L)


# --------------------------------------------------------------------------------------------
# optimisation


def _lag_operators(C: int, k: int, S: int) -> tuple[np.ndarray, int]:
    """Shift operators ``B_d = I_C ⊗ T_d`` (``C k² x C k²``), one per strided lag ``d``, so
    that the central block of :func:`l_orth`'s self-convolution at lag ``d`` is
    ``K B_d Kᵀ`` with ``K`` flattened to ``M x C k²``; and the index of the zero lag."""
    P = l_orth_padding(k, S)
    lags = np.arange(-P, P + 1, S)
    T = np.zeros((len(lags), len(lags), k, k, k, k))
    for ia, da in enumerate(lags):
        for ib, db in enumerate(lags):
            for a in range(k):
                for b in range(k):
                    if 0 <= a + da < k and 0 <= b + db < k:
                        T[ia, ib, a, b, a + da, b + db] = 1.0
    T = T.reshape(len(lags) ** 2, k * k, k * k)
    B = np.einsum("cd,luv->lcudv", np.eye(C), T).reshape(len(T), C * k * k, C * k * k)
    return B, (len(lags) ** 2) // 2


def l_orth_value_and_grad(
    Ks: np.ndarray, stride: int = 1, lag_operators: tuple[np.ndarray, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`l_orth` (RO form) and its gradient for a batch ``Ks`` of shape
    ``(R, M, C, k, k)``, in closed form (numpy, no autograd): with ``G_d = K B_d Kᵀ`` and
    ``E_d = G_d - δ_{d0} I``, ``L = Σ_d ||E_d||_F²`` and, the lag set being symmetric
    (``B_{-d} = B_dᵀ``), ``∇_K L = 4 Σ_d E_d K B_dᵀ``. Same value and cost as the
    self-convolution; this form just makes the optimiser's steps cheap.
    """
    R, M, C, k, _ = Ks.shape
    B, centre = _lag_operators(C, k, stride) if lag_operators is None else lag_operators
    X = Ks.reshape(R, 1, M, C * k * k)
    KB = X @ B  # (R, lags, M, C k²)
    E = KB @ X.transpose(0, 1, 3, 2)  # G_d, (R, lags, M, M)
    E[:, centre] -= np.eye(M)
    value = (E**2).sum(axis=(1, 2, 3))
    grad = 4 * (E @ (X @ B.transpose(0, 2, 1))).sum(axis=1)
    return value, grad.reshape(Ks.shape)


def _dense_value_and_grad(M: int, C: int, k: int, S: int, N: int, boundary: str):
    """Closure: the dense baseline ``||G - I||_F² / N²`` and its gradient for a kernel batch."""
    rows, cols, entry, shape = _conv_index(M, C, k, S, N, boundary)
    n_entries = M * C * k * k
    eye = np.eye(min(shape))
    flat = rows * shape[1] + cols
    unique = len(np.unique(flat)) == len(flat)  # no two taps on one entry (image >= kernel)

    def value_and_grad(Ks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values, grads = [], []
        for K in Ks:
            A = np.zeros(shape)
            if unique:
                A.flat[flat] = K.reshape(-1)[entry]
            else:
                np.add.at(A, (rows, cols), K.reshape(-1)[entry])
            if shape[0] <= shape[1]:
                E = A @ A.T - eye
                gA = 4 * E @ A
            else:
                E = A.T @ A - eye
                gA = 4 * A @ E
            values.append((E**2).sum() / N**2)
            grads.append(np.bincount(entry, gA[rows, cols], minlength=n_entries) / N**2)
        return np.array(values), np.stack(grads).reshape(Ks.shape)

    return value_and_grad


@dataclass
class OrthTrace:
    """Optimisation runs: final kernels ``(R, M, C, k, k)``, loss per step and restart
    ``(steps, R)``, and kernels kept along the path (each ``(R, M, C, k, k)``)."""

    kernels: np.ndarray
    losses: np.ndarray
    snapshots: list[np.ndarray] = field(default_factory=list)
    snapshot_steps: list[int] = field(default_factory=list)


def minimize_orthogonality(
    M: int,
    C: int,
    k: int,
    S: int,
    *,
    steps: int = 4000,
    lr: float = 5e-3,
    init_scale: float = 0.1,
    seed: int = 0,
    restarts: int = 1,
    objective: str = "l_orth",
    N: int | None = None,
    boundary: str = "circular",
    n_snapshots: int = 0,
    init: np.ndarray | None = None,
) -> OrthTrace:
    """Adam (float64, default hyper-parameters besides ``lr``) on an orthogonality penalty
    from ``K ~ N(0, init_scale²)``, for ``restarts`` independent initialisations side by side
    (Adam acts coordinate by coordinate, so batching restarts changes nothing).

    ``objective="l_orth"``: the scalable regulariser (:func:`l_orth_value_and_grad`, RO form;
    the CO correction is a constant). ``objective="dense"``: the baseline
    ``||G - I||_F² / N²`` on the dense matrix of the layer at one output size ``N``, for any
    ``boundary`` (its cost grows with ``N``). ``n_snapshots`` kernels are kept at log-spaced
    steps for stability plots. ``init`` (shape ``(R, M, C, k, k)``) replaces the random start.
    """
    _check_shape(M, C, k, S)
    if steps < 1 or lr <= 0 or init_scale <= 0 or restarts < 1:
        raise ValueError("need steps >= 1, lr > 0, init_scale > 0, restarts >= 1; got "
                         f"{steps}, {lr}, {init_scale}, {restarts}")
    if objective not in ("l_orth", "dense"):
        raise ValueError(f"objective must be 'l_orth' or 'dense', got {objective!r}")
    if objective == "dense":
        if N is None:
            raise ValueError("the dense penalty needs an output size N")
        _check_N(N)
        _check_boundary(boundary)
        value_and_grad = _dense_value_and_grad(M, C, k, S, N, boundary)
    else:
        if boundary != "circular":
            raise ValueError("L_orth certifies circular layers; use objective='dense' for "
                             f"boundary={boundary!r}")
        ops = _lag_operators(C, k, S)

        def value_and_grad(Ks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return l_orth_value_and_grad(Ks, S, ops)

    shape5 = (restarts, M, C, k, k)
    if init is None:
        W = init_scale * np.random.default_rng(seed).normal(size=shape5)
    else:
        if tuple(init.shape) != shape5:
            raise ValueError(f"init has shape {tuple(init.shape)}, expected {shape5}")
        W = np.array(init, dtype=float)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    m1, m2 = np.zeros_like(W), np.zeros_like(W)
    marks = set()
    if n_snapshots > 0:
        marks = set(np.unique(np.geomspace(1, steps, n_snapshots).astype(int)).tolist())
    losses = np.empty((steps, restarts))
    snapshots, snapshot_steps = [], []
    for step in range(1, steps + 1):
        value, grad = value_and_grad(W)
        losses[step - 1] = value
        m1 = beta1 * m1 + (1 - beta1) * grad
        m2 = beta2 * m2 + (1 - beta2) * grad**2
        W = W - lr * (m1 / (1 - beta1**step)) / (np.sqrt(m2 / (1 - beta2**step)) + eps)
        if step in marks:
            snapshots.append(W.copy())
            snapshot_steps.append(step)
    return OrthTrace(W, losses, snapshots, snapshot_steps)
