"""Statistics of Switchable Normalization, derived from per-sample moments.

Pure tensor math on ``(N, C)`` tensors with a hand-written backward, used as
the ``mix`` of :func:`mmnorm.ops.moment_norm.moment_norm`. Branch order is
always ``[IN, LN, BN]`` (index 0, 1, 2), in weights, state dicts, logs and
plots.

Forward, for IN moments ``mean_in``, ``var_in`` (unbiased) of shape
``(N, C)``::

    mean_ln = mean_c(mean_in)
    var_ln  = mean_c(var_in) + mean_c((mean_in - mean_ln)^2)
    mean_bn = mean_n(mean_in)
    var_bn  = mean_n(var_in) + mean_n((mean_in - mean_bn)^2)
    mean    = w0 mean_in + w1 mean_ln + w2 mean_bn
    var     = v0 var_in  + v1 var_ln  + v2 var_bn

``var_ln`` and ``var_bn`` equal the authors' ``mean(var_in + mean_in^2) -
mean^2`` (within- plus between-slice variance) without float32
cancellation. In inference the BN terms are the running buffers.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

BRANCHES = ('in', 'ln', 'bn')


def _bessel(count: int) -> float:
    """``count / (count - 1)``, or 1 when there is a single element."""
    return count / (count - 1) if count > 1 else 1.0


def masked_softmax(logits: Tensor, available: Tensor) -> Tensor:
    """Softmax over the available entries; unavailable ones get weight 0.

    Args:
        logits: ``(K,)`` pre-softmax mixing parameters (lambdas).
        available: ``(K,)`` bool, at least one entry true.
    """
    return logits.masked_fill(~available, float('-inf')).softmax(0)


def chosen_weights(weights: Tensor, choice: Tensor) -> Tensor:
    """``weights``, or the one-hot of branch ``choice`` where that is set.

    Args:
        weights: ``(K,)`` mixing weights.
        choice: 0-dim long tensor, a branch index or -1 (none: the weights
            stay). A chosen row's weights get an exactly-zero gradient.
    """
    branches = torch.arange(weights.shape[0], device=choice.device)
    one_hot = (branches == choice).to(weights.dtype)
    return torch.where(choice >= 0, one_hot, weights)


class SwitchableMix:
    """Mixes IN, LN and BN statistics; a ``mix`` for ``moment_norm``.

    Args:
        flat_input: the input was ``(N, C)`` (one element per slice). LN and
            BN variances are then the unbiased variances over channels and
            over samples, as in the authors' SN1d; with a single sample the
            BN variance is 0 instead of NaN.

    Parameters passed to :meth:`forward` / :meth:`backward`, in order:
    ``mean_weight``, ``var_weight`` (``(3,)``, already normalized), then
    ``running_mean``, ``running_var`` (``(C,)``) or ``None`` for batch
    statistics. The BN branch is the only one that looks across samples;
    subclasses that share it across processes override :meth:`batch_stats`
    and :meth:`batch_stats_backward`.
    """

    def __init__(self, flat_input: bool = False) -> None:
        self.flat_input = flat_input

    def batch_stats(self, mean_in: Tensor, var_in: Tensor
                    ) -> tuple[Tensor, Tensor]:
        """BN statistics ``(mean_bn, var_bn)``, each ``(C,)``, of the
        samples (Bessel-corrected over samples for ``(N, C)`` input)."""
        mean_bn = mean_in.mean(0)
        var_bn = var_in.mean(0) + (mean_in - mean_bn).square().mean(0)
        if self.flat_input:
            var_bn = var_bn * _bessel(mean_in.shape[0])
        return mean_bn, var_bn

    def batch_stats_backward(self, mean_in: Tensor, mean_bn: Tensor,
                             grad_mean_bn: Tensor, grad_var_bn: Tensor
                             ) -> tuple[Tensor, Tensor]:
        """Gradients w.r.t. ``(mean_in, var_in)`` of :meth:`batch_stats`
        given ``(C,)`` gradients of its outputs. The deviation term of
        ``var_bn`` contributes ``2 (mean_in - mean_bn) / N``; its dependence
        through ``mean_bn`` vanishes because the deviations sum to 0."""
        count = mean_in.shape[0]
        bessel = _bessel(count) if self.flat_input else 1.0
        g_mean = grad_mean_bn / count
        g_var = grad_var_bn * (bessel / count)
        return (g_mean + 2.0 * (mean_in - mean_bn) * g_var,
                g_var.expand_as(mean_in))

    def _ln_stats(self, mean_in: Tensor, var_in: Tensor):
        bessel = _bessel(mean_in.shape[1]) if self.flat_input else 1.0
        mean_ln = mean_in.mean(1, keepdim=True)
        dev_ln = mean_in - mean_ln
        var_ln = (var_in.mean(1, keepdim=True)
                  + dev_ln.square().mean(1, keepdim=True)) * bessel
        return mean_ln, var_ln, dev_ln, bessel

    def forward(self, mean_in: Tensor, var_in: Tensor, mean_weight: Tensor,
                var_weight: Tensor, running_mean: Optional[Tensor] = None,
                running_var: Optional[Tensor] = None
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Returns ``(mean, var, batch_mean, batch_var)``: the mixed
        ``(N, C)`` statistics and this batch's ``(C,)`` BN statistics
        (what running buffers track; the running ones in inference)."""
        mean_ln, var_ln, _, _ = self._ln_stats(mean_in, var_in)
        if running_mean is None:
            mean_bn, var_bn = self.batch_stats(mean_in, var_in)
        else:
            mean_bn, var_bn = running_mean, running_var
        # Derived variances can come out a rounding error below zero.
        var_ln = var_ln.clamp(min=0)
        var_bn = var_bn.clamp(min=0)
        mean = (mean_weight[0] * mean_in + mean_weight[1] * mean_ln
                + mean_weight[2] * mean_bn)
        var = (var_weight[0] * var_in + var_weight[1] * var_ln
               + var_weight[2] * var_bn)
        return mean, var, mean_bn, var_bn

    def backward(self, mean_in: Tensor, var_in: Tensor,
                 params: tuple[Optional[Tensor], ...],
                 outputs: tuple[Tensor, ...], grad_mean: Tensor,
                 grad_var: Tensor) -> tuple[Optional[Tensor], ...]:
        """Gradients w.r.t. ``(mean_in, var_in, *params)`` given those of
        the mixed ``mean`` and ``var`` (each ``(N, C)``). ``outputs`` is what
        :meth:`forward` returned after ``(mean, var)``: the BN statistics
        it used, so that they are not recomputed (or re-synchronized)."""
        mean_weight, var_weight, running_mean, _ = params
        use_batch = running_mean is None
        num_channels = mean_in.shape[1]
        mean_ln, var_ln, dev_ln, bessel_c = self._ln_stats(mean_in, var_in)
        mean_bn, var_bn = outputs

        grad_mean_w = torch.stack([
            (grad_mean * mean_in).sum(), (grad_mean * mean_ln).sum(),
            (grad_mean * mean_bn).sum()])
        grad_var_w = torch.stack([
            (grad_var * var_in).sum(), (grad_var * var_ln.clamp(min=0)).sum(),
            (grad_var * var_bn.clamp(min=0)).sum()])

        # LN branch: per-sample reductions over channels.
        g_mean_ln = mean_weight[1] * grad_mean.sum(1, keepdim=True)
        g_var_ln = (var_weight[1] * grad_var.sum(1, keepdim=True)
                    * (var_ln > 0) * bessel_c)
        grad_mean_in = (mean_weight[0] * grad_mean
                        + (g_mean_ln + 2.0 * g_var_ln * dev_ln) / num_channels)
        grad_var_in = var_weight[0] * grad_var + g_var_ln / num_channels
        if use_batch:
            g_mean_bn = mean_weight[2] * grad_mean.sum(0)
            g_var_bn = var_weight[2] * grad_var.sum(0) * (var_bn > 0)
            g_mean_in_bn, g_var_in_bn = self.batch_stats_backward(
                mean_in, mean_bn, g_mean_bn, g_var_bn)
            grad_mean_in = grad_mean_in + g_mean_in_bn
            grad_var_in = grad_var_in + g_var_in_bn
        return grad_mean_in, grad_var_in, grad_mean_w, grad_var_w, None, None


#: Mix classes whose statistics the compiled kernel computes by itself
#: (``sn_mix_forward`` / ``sn_mix_backward`` in ``mmnorm/ops/csrc``): exact
#: classes, as a subclass may change the statistics (SyncSN's shares the BN
#: branch across processes). Other mixes run their own Python methods.
KERNEL_MIXES: set = {SwitchableMix}
