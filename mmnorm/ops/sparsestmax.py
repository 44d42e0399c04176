"""Sparsemax and SparsestMax: the mixing-weight maps of Sparse SN.

``sparsemax`` is the Euclidean projection onto the probability simplex.
``sparsestmax(z, r)`` (Shao et al., 2019) additionally keeps the result at
least ``r`` away from the centre of the face it lies on: a point inside
that circle is pushed out to it, and if that leaves the simplex the
projection is repeated on the smaller face with the remaining radius. As
``r`` grows the output becomes one-hot (for 3 entries from
``r >= sqrt(2/3)``).

Both are differentiable almost everywhere and written with plain torch
operations on the ``(K,)`` vector, so autograd differentiates them.
"""
from __future__ import annotations

import torch
from torch import Tensor


def sparsemax(z: Tensor) -> Tensor:
    """Euclidean projection of ``z`` (shape ``(K,)``) onto the simplex."""
    sorted_z, _ = torch.sort(z, descending=True)
    cumsum = sorted_z.cumsum(0)
    ks = torch.arange(1, z.numel() + 1, dtype=z.dtype, device=z.device)
    in_support = 1 + ks * sorted_z > cumsum
    k = in_support.sum()  # the support is a prefix of the sorted entries
    tau = (cumsum[k - 1] - 1) / k
    return (z - tau).clamp(min=0)


def sparsestmax(z: Tensor, radius: float) -> Tensor:
    """SparsestMax of ``z`` (shape ``(K,)``) with ``radius`` >= 0.

    Returns a point of the simplex that is at least ``radius`` (reduced
    on each smaller face) from the centre of its face, or a vertex.
    """
    if radius < 0:
        raise ValueError(f'sparsestmax: radius must be >= 0, got {radius}')
    w = sparsemax(z)
    remaining_sq = float(radius) ** 2
    centre_prev = None
    while True:
        support = w > 0
        size = int(support.sum())
        if size == 1:
            return w
        centre = support.to(w.dtype) / size
        if centre_prev is not None:
            remaining_sq -= float((centre - centre_prev).square().sum())
        if remaining_sq <= 0:
            return w
        r = remaining_sq ** 0.5
        offset = w - centre
        dist = offset.norm()
        if dist >= r:
            return w
        if dist < 1e-6:
            # The centre itself (e.g. uniform lambdas): the direction is
            # undefined. Break the tie toward the first largest entry so
            # the result is deterministic instead of 0/0.
            direction = torch.zeros_like(w)
            first = int(torch.nonzero(support)[0])
            direction[first] = 1.0
            offset = direction - centre
            dist = offset.norm()
        pushed = centre + offset * (r / dist)
        # back onto the plane sum(w) = 1 against rounding drift
        pushed = pushed + (1 - pushed.sum()) * centre
        if bool((pushed >= 0).all()):
            return pushed
        w = sparsemax(pushed)
        centre_prev = centre
