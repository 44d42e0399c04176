"""Sparsemax and SparsestMax: the mixing-weight maps of Sparse SN.

``sparsemax`` is the Euclidean projection onto the probability simplex.
``sparsestmax(z, r)`` (Shao et al., 2019) additionally keeps the result at
least ``r`` away from the centre of the face it lies on: a point inside
that circle is pushed out to it, and if that leaves the simplex the
projection is repeated on the smaller face with the remaining radius. As
``r`` grows the output becomes one-hot (for 3 entries from
``r >= sqrt(2/3)``).

Both are differentiable almost everywhere and written with plain torch
operations, so autograd differentiates them. They run entirely on the
tensors' device: no value is read back to the host and no Python branch
depends on a tensor's value. The recursion of SparsestMax becomes a fixed
number of rounds (the face shrinks by at least one vertex per round, so
after ``K - 1`` rounds for ``K`` entries only a vertex is left) whose
results are selected with ``torch.where``; ``torch.compile`` traces them
as one graph.

On the kernel backends (:func:`mmnorm.ops.dispatch.backend_for`: the CPU
kernel, or CUDA with Triton) :func:`sparsestmax` is the library op
``torch.ops.mmnorm.sparsestmax`` (``mmnorm/ops/csrc/sparsestmax.cpp``):
the same rounds in ATen ops under one C++ autograd node with the backward
written out, so a learning SSN layer makes one call per direction instead
of about 190 small ops forward and 150 backward with Python autograd work.
Elsewhere (export, the composed path) the rounds below run as they are.

Both accept a batch of vectors, ``(..., K)``, and an optional ``(K,)`` (or
broadcastable) bool mask ``available``: unavailable entries take no part
and get weight 0, as if the function ran on the available entries only
(SN's ``(N, C)`` input has no IN branch).
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from . import dispatch

#: Below this distance from the centre of its face a point counts as the
#: centre itself, whose push direction is undefined (uniform lambdas).
_TIE_DISTANCE = 1e-6


def _available_mask(z: Tensor, available: Optional[Tensor]) -> Tensor:
    if available is None:
        return torch.ones_like(z, dtype=torch.bool)
    return available.to(device=z.device, dtype=torch.bool).expand_as(z)


def _sparsemax(z: Tensor, available: Tensor) -> Tensor:
    """Simplex projection over the last dim, unavailable entries 0.

    With ``z`` sorted descending into ``s`` and ``S_k`` its prefix sums, the
    support is the prefix ``k`` with ``1 + k s_k > S_k`` and the threshold
    is ``tau = (S_k - 1) / k`` for its size; ``w = max(z - tau, 0)``.
    Unavailable entries are ``-inf``: sorted last, never in the support.
    """
    masked = z.masked_fill(~available, float('-inf'))
    sorted_z, _ = torch.sort(masked, dim=-1, descending=True)
    cumsum = sorted_z.cumsum(-1)
    with torch.no_grad():
        ks = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype,
                          device=z.device)
        # the support is a prefix of the sorted entries; never empty
        size = (1 + ks * sorted_z > cumsum).sum(-1, keepdim=True).clamp(
            min=1)
    tau = (cumsum.gather(-1, size - 1) - 1) / size.to(z.dtype)
    return (masked - tau).clamp(min=0)


def sparsemax(z: Tensor, available: Optional[Tensor] = None) -> Tensor:
    """Euclidean projection of ``z`` (``(..., K)``) onto the simplex.

    Args:
        z: logits, projected along the last dim.
        available: optional bool mask broadcastable to ``z``; masked-out
            entries are left out of the projection and come out 0.
    """
    return _sparsemax(z, _available_mask(z, available))


def sparsestmax(z: Tensor, radius: Union[float, Tensor],
                available: Optional[Tensor] = None) -> Tensor:
    """SparsestMax of ``z`` (``(..., K)``, along the last dim).

    Returns a point of the simplex that is at least ``radius`` (reduced
    on each smaller face) from the centre of its face, or a vertex.

    Args:
        z: logits.
        radius: ``>= 0``, a number or a 0-dim tensor (kept on the device;
            a tensor is not validated, that would read it back).
        available: optional bool mask as for :func:`sparsemax`.

    Rounds, starting from ``w = sparsemax(z)`` and ``r2 = radius ** 2``:
    with ``u`` the centre of the support of ``w`` (reduce ``r2`` by
    ``|u - u_prev| ** 2`` after the first round), return ``w`` if it is
    a vertex, if ``r2 <= 0`` or if ``|w - u| >= sqrt(r2)``; otherwise push
    ``w`` out to ``p = u + sqrt(r2) (w - u) / |w - u|`` (from the centre
    itself: toward the first vertex of the face) and return ``p`` if it
    lies in the simplex, else continue with ``w = sparsemax(p)``.
    """
    if not isinstance(radius, Tensor):
        if not radius >= 0:
            raise ValueError(
                f'sparsestmax: radius must be >= 0, got {radius}')
        radius = torch.tensor(float(radius), dtype=z.dtype, device=z.device)
    radius = radius.to(device=z.device, dtype=z.dtype)
    if dispatch.backend_for(z) in (dispatch.CPU_KERNEL, dispatch.TRITON):
        mask = None if available is None else available.to(
            device=z.device, dtype=torch.bool)
        return torch.ops.mmnorm.sparsestmax(z, radius, mask)
    return _sparsestmax_rounds(z, radius, _available_mask(z, available))


def _sparsestmax_rounds(z: Tensor, radius: Tensor,
                        available: Tensor) -> Tensor:
    """The rounds of :func:`sparsestmax` in plain tensor ops (``radius``
    a 0-dim tensor of ``z``'s dtype, ``available`` a bool mask of ``z``'s
    shape)."""
    w = _sparsemax(z, available)
    remaining_sq = radius.square().expand(z.shape[:-1]).unsqueeze(-1)
    out = w
    done = torch.zeros_like(remaining_sq, dtype=torch.bool)
    centre_prev: Optional[Tensor] = None
    # After K - 1 rounds that did not return, the support is a vertex.
    for _ in range(z.shape[-1] - 1):
        # what only selects (no gradient flows through it)
        with torch.no_grad():
            support = w > 0
            size = support.sum(-1, keepdim=True)
            centre = support.to(z.dtype) / size.clamp(min=1).to(z.dtype)
            if centre_prev is not None:
                remaining_sq = remaining_sq - (
                    centre - centre_prev).square().sum(-1, keepdim=True)
            r = remaining_sq.clamp(min=0).sqrt()
            # From the centre itself the direction is undefined: break the
            # tie toward the first vertex of the face (not 0/0).
            indicator = support.to(z.dtype)
            first = indicator * (indicator.cumsum(-1) == 1)
            tie_offset = first - centre
            tie_dist = torch.linalg.vector_norm(tie_offset, dim=-1,
                                                keepdim=True)
        offset = w - centre
        dist = torch.linalg.vector_norm(offset, dim=-1, keepdim=True)
        with torch.no_grad():
            stays = (size <= 1) | (remaining_sq <= 0) | (dist >= r)
            tie = dist < _TIE_DISTANCE
        offset = torch.where(tie, tie_offset, offset)
        dist = torch.where(tie, tie_dist, dist)
        # a zero distance only occurs where the result is not used
        pushed = centre + offset * (r / torch.where(dist > 0, dist, 1))
        # back onto the plane sum(w) = 1 against rounding drift
        pushed = pushed + (1 - pushed.sum(-1, keepdim=True)) * centre
        with torch.no_grad():
            inside = (pushed >= 0).all(-1, keepdim=True)
        out = torch.where(done, out, torch.where(stays, w, pushed))
        done = done | stays | inside
        w = torch.where(done, w, _sparsemax(pushed, available))
        centre_prev = centre
    return torch.where(done, out, w)
