"""The math of Switchable Whitening (Pan et al., ICCV 2019).

Shapes: the input ``x`` of shape ``(N, C, *S)`` is viewed as
``(N, G, c, M)`` with ``G = C / c`` groups of ``c`` channels and
``M = |S|`` elements per channel and sample.

Statistics (all biased except LN's variance, as in the authors' code):

* IW (instance whitening), per sample and group:
  ``mu_i = mean_m x`` ``(N, G, c, 1)``,
  ``Sigma_i = (x - mu_i)(x - mu_i)^T / M`` ``(N, G, c, c)``;
* BW (batch whitening), per group over ``(N, S)``, derived exactly from
  the IW ones, never from a second pass over ``x``:
  ``mu_b = mean_n mu_i`` ``(G, c, 1)``,
  ``Sigma_b = mean_n [Sigma_i + (mu_i - mu_b)(mu_i - mu_b)^T]``;
* BN / IN: the diagonals of ``Sigma_b`` / ``Sigma_i`` (means as BW / IW);
* LN: per sample mean and unbiased variance over ``(C, S)``, times ``I``.

Mixing (softmax weights ``w`` for means, ``w'`` for covariances, over the
sources of :data:`SW_SOURCES` ``[sw_type]``):
``mu = sum_k w_k mu_k``, ``Sigma = sum_k w'_k Sigma_k + eps I``.

Whitening by Newton's iteration (IterNorm): ``Sigma_N = Sigma / tr Sigma``,
``P_0 = I``, ``P_{k+1} = 1.5 P_k - 0.5 P_k^3 Sigma_N``,
``W = P_T / sqrt(tr Sigma)`` (approximately ``Sigma^-1/2``; computed in
the equivalent coupled form, see :func:`newton_whitening`); then
``y = gamma * W (x - mu) + beta`` per (sample, group), i.e. the affine map
``y = A (x - mu_i) + s`` with ``A = diag(gamma) W`` ``(N, G, c, c)`` and
``s = A (mu_i - mu) + beta`` ``(N, G, c, 1)``.

Cost and memory. :class:`_Whiten` does the passes over the big tensor by
hand: one batched matmul for the IW covariances and one for
``A (x - mu_i) + s`` forward; backward ``dA = dy (x - mu_i)^T``,
``ds = sum_m dy`` and ``dx = A^T dy + (dS + dS^T)(x - mu_i) / M +
(dmu_i - A^T ds) / M``, with ``dS``, ``dmu_i`` the gradients of the IW
statistics. Everything between the statistics and ``(A, b)``
(mixing, Newton's iteration, the synchronization of SyncSW) lives on
``(N, G, c, c)`` tensors and is differentiated by autograd inside the
backward. Saved for backward: the centred input (the size of the input)
and the small matrices. Statistics and Newton's iteration run in float32
(float64 for float64 input), with autocast switched off.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

#: Sources of each ``sw_type``, in the authors' order (the order of the
#: mixing weights in state dicts, logs and plots).
SW_SOURCES = {
    2: ('bw', 'iw'),
    3: ('bw', 'iw', 'ln'),
    5: ('bw', 'iw', 'bn', 'in', 'ln'),
}


def stat_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 input, float32 otherwise."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _outer(d: Tensor) -> Tensor:
    """``d d^T`` for a stack of column vectors ``(..., c, 1)``."""
    return d @ d.transpose(-1, -2)


def _eye_like(sigma: Tensor) -> Tensor:
    c = sigma.shape[-1]
    return torch.eye(c, dtype=sigma.dtype, device=sigma.device)


def batch_stats_local(mu_i: Tensor, sigma_i: Tensor) -> tuple[Tensor, Tensor]:
    """BW statistics of one process: ``(G, c, 1)`` mean and ``(G, c, c)``
    biased covariance over ``(N, S)``, from the IW ones (differentiable)."""
    mu_b = mu_i.mean(0)
    d = mu_i - mu_b
    return mu_b, (sigma_i + _outer(d)).mean(0)


class _SyncBatchStats(torch.autograd.Function):
    """BW statistics over a process group, exact for unequal batches.

    Forward: every process contributes its pixel count ``n_r``, its mean
    ``m_r`` and its centred scatter ``S_r`` (one ``all_gather`` of a
    ``G * c * (c + 1) + 1`` payload); they are combined as in Chan's
    parallel algorithm, ``mu = sum n_r m_r / n``,
    ``Sigma = sum [S_r + n_r (m_r - mu)(m_r - mu)^T] / n``, which never
    subtracts raw sums of outer products. Backward: one ``all_reduce`` of
    the gradients of ``(mu, Sigma)`` (every process whitens with them).
    """

    @staticmethod
    def forward(ctx, mu_i: Tensor, sigma_i: Tensor, pixels: int,
                group: Optional[dist.ProcessGroup]) -> tuple[Tensor, Tensor]:
        n, g, c = mu_i.shape[0], mu_i.shape[1], mu_i.shape[2]
        count = mu_i.new_full((1,), float(n * pixels))
        if n > 0:
            m_r = mu_i.mean(0)
            d = mu_i - m_r
            scatter = (sigma_i + _outer(d)).sum(0) * pixels
        else:
            m_r = mu_i.new_zeros((g, c, 1))
            scatter = mu_i.new_zeros((g, c, c))
        payload = torch.cat([count, m_r.flatten(), scatter.flatten()])
        world = dist.get_world_size(group)
        gathered = [torch.empty_like(payload) for _ in range(world)]
        dist.all_gather(gathered, payload, group=group)
        table = torch.stack(gathered)  # (world, 1 + G c + G c c)
        counts = table[:, 0]
        total = counts.sum().clamp(min=1.0)
        means = table[:, 1:1 + g * c].view(world, g, c, 1)
        scatters = table[:, 1 + g * c:].view(world, g, c, c)
        weights = (counts / total).view(world, 1, 1, 1)
        mu = (weights * means).sum(0)
        dev = means - mu
        sigma = (scatters.sum(0)
                 + (counts.view(world, 1, 1, 1) * _outer(dev)).sum(0)) / total
        ctx.save_for_backward(mu_i, mu, total)
        ctx.pixels, ctx.group = pixels, group
        return mu, sigma

    @staticmethod
    def backward(ctx, grad_mu: Tensor, grad_sigma: Tensor):
        mu_i, mu, total = ctx.saved_tensors
        g, c = mu.shape[0], mu.shape[1]
        grads = torch.cat([grad_mu.flatten(), grad_sigma.flatten()])
        dist.all_reduce(grads, group=ctx.group)
        g_mu = grads[:g * c].view(g, c, 1)
        g_sigma = grads[g * c:].view(g, c, c)
        scale = ctx.pixels / total
        sym = g_sigma + g_sigma.transpose(-1, -2)
        grad_mu_i = scale * (g_mu + sym @ (mu_i - mu))
        grad_sigma_i = (scale * g_sigma).expand(mu_i.shape[0], g, c, c)
        return grad_mu_i, grad_sigma_i.contiguous(), None, None


def sync_batch_stats(mu_i: Tensor, sigma_i: Tensor, pixels: int,
                     group: Optional[dist.ProcessGroup] = None
                     ) -> tuple[Tensor, Tensor]:
    """BW statistics over all processes of ``group`` (see
    :class:`_SyncBatchStats`); ``pixels`` is ``M`` of this process."""
    return _SyncBatchStats.apply(mu_i, sigma_i, pixels, group)


def newton_whitening(sigma: Tensor, iterations: int) -> Tensor:
    """``W ~ Sigma^-1/2`` by ``iterations`` Newton steps on the
    trace-normalized ``Sigma`` (``(..., c, c)``, symmetric positive
    definite; differentiable).

    The paper's iteration ``P_{k+1} = 1.5 P_k - 0.5 P_k^3 Sigma_N`` is run
    in its coupled form (``Z_k = P_k``, ``Y_k = P_k Sigma_N``):
    ``R = 3 I - Z_k Y_k``, ``Y_{k+1} = Y_k R / 2``, ``Z_{k+1} = R Z_k / 2``.
    The iterates are the same in exact arithmetic and the cost is the same
    (three ``c x c`` products per step), but rounding errors do not grow:
    the uncoupled form diverges once it has converged (float64, ``c = 4``,
    condition number 25: error 1e-9 after 10 steps, 1e4 after 20, NaN
    after 30), the coupled one stays converged.
    """
    eye = _eye_like(sigma)
    # the trace as a masked sum: exports at ONNX opset 11 (no Diagonal)
    trace = (sigma * eye).sum((-2, -1), keepdim=True)
    y = sigma / trace
    z = eye.expand_as(sigma)
    for _ in range(iterations):
        r = 3.0 * eye - z @ y
        y = 0.5 * (y @ r)
        z = 0.5 * (r @ z)
    return z * trace.rsqrt()


def mix_statistics(mu_i: Tensor, sigma_i: Tensor, mu_b: Tensor,
                   sigma_b: Tensor, mean_w: Tensor, var_w: Tensor,
                   sw_type: int, pixels: int, eps: float
                   ) -> tuple[Tensor, Tensor]:
    """The mixed statistics from the IW ones ``mu_i``/``sigma_i``, the BW
    ones ``mu_b``/``sigma_b`` (batch or running) and the softmax weights
    over :data:`SW_SOURCES` ``[sw_type]``.

    Returns:
        ``mu_i - mu`` ``(N, G, c, 1)``, written as
        ``sum_k w_k (mu_i - mu_k)`` (the weights sum to 1) so that it is
        exactly 0 for constant input and free of cancellation for a large
        mean, and the mixed covariance plus ``eps I`` ``(N, G, c, c)``.
    """
    eye = _eye_like(sigma_i)
    to_batch = mu_i - mu_b
    offset = mean_w[0] * to_batch
    cov = var_w[0] * sigma_b + var_w[1] * sigma_i
    if sw_type == 5:
        offset = offset + mean_w[2] * to_batch
        # diagonal parts as masked products (ONNX opset 11 has no
        # Diagonal)
        cov = (cov + var_w[2] * (sigma_b * eye)
               + var_w[3] * (sigma_i * eye))
    if sw_type in (3, 5):
        n = mu_i.shape[0]
        flat_mu = mu_i.reshape(n, -1)
        mu_ln = flat_mu.mean(1)
        to_layer = flat_mu - mu_ln[:, None]
        elements = flat_mu.shape[1] * pixels
        spread = (sigma_i.diagonal(dim1=-2, dim2=-1).reshape(n, -1)
                  + to_layer.square()).sum(1) * pixels
        var_ln = spread / max(elements - 1, 1)
        offset = offset + mean_w[-1] * to_layer.view_as(mu_i)
        cov = cov + var_w[-1] * var_ln.view(n, 1, 1, 1) * eye
    return offset, cov + eps * eye


#: ``small(mu_i, sigma_i, *params) -> (A, s, mu_b, sigma_b)``: everything
#: between the IW statistics and the affine map ``y = A (x - mu_i) + s``,
#: on small tensors.
SmallGraph = Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]


class _Whiten(torch.autograd.Function):
    """``y = A (x - mu_i) + s`` with ``mu_i``, ``A`` and ``s`` taken from
    ``x`` and the big-tensor passes differentiated by hand (see the module
    docstring).

    Inputs: ``x`` ``(N, C, *S)``, the group size, the small graph, whether
    to record it for backward, and the tensors it differentiates
    (parameters). Outputs: ``y`` (the dtype of ``x``) and the detached BW
    statistics ``(G, c, 1)``, ``(G, c, c)``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, group_size: int, small: SmallGraph,
                need_graph: bool, *params: Tensor):
        dtype = stat_dtype(x)
        n, channels = x.shape[0], x.shape[1]
        groups = channels // group_size
        pixels = math.prod(x.shape[2:])
        xs = x.reshape(n, groups, group_size, pixels).to(dtype)
        mu_i = xs.mean(-1, keepdim=True)
        xc = xs - mu_i
        sigma_i = (xc @ xc.transpose(-1, -2)) / pixels
        with torch.set_grad_enabled(need_graph):
            leaves = [mu_i.detach().requires_grad_(need_graph),
                      sigma_i.detach().requires_grad_(need_graph)]
            inner = [p.detach().requires_grad_(
                need_graph and p.requires_grad) for p in params]
            a, shift, mu_b, sigma_b = small(*leaves, *inner)
        a_ = a.detach().reshape(-1, group_size, group_size)
        # written into a tensor of the input's shape: the output must not
        # be a view (in-place ops such as ReLU(inplace=True) follow)
        y = torch.empty(x.shape, dtype=dtype, device=x.device)
        torch.baddbmm(shift.detach().reshape(-1, group_size, 1), a_,
                      xc.reshape(-1, group_size, pixels),
                      out=y.view(-1, group_size, pixels))
        if x.dtype == dtype:
            ctx.save_for_backward(xc, mu_i)
            ctx.recompute = False
        else:  # keep the narrower input, centre it again in backward
            ctx.save_for_backward(x, mu_i)
            ctx.recompute = True
            del xc
        ctx.graph = (a, shift, leaves, inner) if need_graph else None
        ctx.meta = (n, groups, group_size, pixels, dtype)
        ctx.mark_non_differentiable(mu_b, sigma_b)
        return y.to(x.dtype), mu_b.detach(), sigma_b.detach()

    @staticmethod
    def backward(ctx, grad_y: Tensor, *unused):
        with torch.autocast(grad_y.device.type, enabled=False):
            return _Whiten._backward(ctx, grad_y)

    @staticmethod
    def _backward(ctx, grad_y: Tensor):
        saved, mu_i = ctx.saved_tensors
        n, groups, c, pixels, dtype = ctx.meta
        a, shift, leaves, inner = ctx.graph
        if ctx.recompute:
            xc = saved.reshape(n, groups, c, pixels).to(dtype) - mu_i
        else:
            xc = saved
        dy = grad_y.reshape(n, groups, c, pixels).to(dtype)
        ds = dy.sum(-1, keepdim=True)
        da = dy @ xc.transpose(-1, -2)
        wanted = leaves + [p for p in inner if p.requires_grad]
        with torch.enable_grad():
            # retain: the outer graph may be run again (retain_graph);
            # the small graph is freed with this node
            grads = torch.autograd.grad((a, shift), wanted, (da, ds),
                                        retain_graph=True, allow_unused=True)
        param_grads = iter(grads[2:])
        out = [next(param_grads) if p.requires_grad else None
               for p in inner]
        if not ctx.needs_input_grad[0]:
            return (None, None, None, None, *out)
        a_t = a.detach().transpose(-1, -2)
        # x - mu_i depends on mu_i too: -A^T sum_m dy
        g_mu = -(a_t @ ds)
        if grads[0] is not None:
            g_mu = g_mu + grads[0]
        a_t = a_t.reshape(-1, c, c)
        dx = torch.baddbmm((g_mu / pixels).reshape(-1, c, 1), a_t,
                           dy.reshape(-1, c, pixels))
        if grads[1] is not None:
            sym = (grads[1] + grads[1].transpose(-1, -2)) / pixels
            dx.baddbmm_(sym.reshape(-1, c, c), xc.reshape(-1, c, pixels))
        return (dx.view(grad_y.shape).to(grad_y.dtype), None, None, None,
                *out)


def switchable_whitening(x: Tensor, group_size: int, small: SmallGraph,
                         params: Sequence[Tensor]
                         ) -> tuple[Tensor, Tensor, Tensor]:
    """Whiten ``x`` ``(N, C, *S)`` with the affine map ``(A, b)`` that
    ``small`` builds from the IW statistics and ``params``.

    Returns ``y`` (shape and dtype of ``x``) and the BW statistics the
    forward used (``(G, c, 1)``, ``(G, c, c)``, detached) for the running
    buffers.
    """
    device_type = x.device.type
    with torch.autocast(device_type, enabled=False):
        need_graph = torch.is_grad_enabled() and (
            x.requires_grad or any(p.requires_grad for p in params))
        return _Whiten.apply(x, group_size, small, need_graph, *params)
