"""The math of Kalman Normalization (Wang et al., 2018): per-group batch
moments, moment propagation through ReLU and a linear operator (analytic or
sampled, as the authors' predictor), the Kalman combination and the
divergence guard. Plain tensor functions; the layer is
:class:`mmnorm.layers.kn.KalmanNorm`, the wiring
:mod:`mmnorm.models.kalman_chain`.

Statistics are per group of samples: ``(G, C)`` tensors, ``G = N // k`` for
micro-batch groups of ``k`` samples (``G = 1``: ordinary batch statistics).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: keeps ``sqrt`` and divisions finite for zero variances
_TINY = 1e-12


def group_moments(x: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """Biased per-channel mean and variance of each group of samples.

    Args:
        x: ``(N, C, *)`` with ``N`` a multiple of ``group_size``.
        group_size: samples per group ``k``.

    Returns:
        ``(mean, var)``, each ``(N // k, C)``.
    """
    n, c = x.shape[:2]
    grouped = x.reshape(n // group_size, group_size, c, -1).transpose(1, 2)
    var, mean = torch.var_mean(grouped.flatten(2), dim=2, unbiased=False)
    return mean, var


def rectified_moments(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of ``ReLU(z)`` for ``z ~ N(mean, var)`` elementwise.

    With ``s = sqrt(var)``, ``a = mean / s``, ``Phi``/``phi`` the standard
    normal cdf/pdf: ``E[relu z] = mean Phi(a) + s phi(a)`` and
    ``E[relu z ^ 2] = (mean^2 + var) Phi(a) + mean s phi(a)``.
    """
    std = torch.sqrt(var.clamp_min(0) + _TINY)
    a = mean / std
    cdf = 0.5 * (1 + torch.erf(a / math.sqrt(2)))
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    first = mean * cdf + std * pdf
    second = (mean * mean + var) * cdf + mean * std * pdf
    return first, (second - first * first).clamp_min(0)


def _weight_sums(operator: nn.Module) -> tuple[Tensor, Tensor, int]:
    """``(sum W, sum W^2)`` over the kernel window, each
    ``(groups, C_out / groups, C_in / groups)``, and ``groups``."""
    weight = operator.weight
    groups = getattr(operator, 'groups', 1)
    flat = weight.reshape(weight.shape[0], weight.shape[1], -1)
    shape = (groups, weight.shape[0] // groups, weight.shape[1])
    return (flat.sum(2).reshape(shape), flat.pow(2).sum(2).reshape(shape),
            groups)


def linear_moments(operator: nn.Module, mean: Tensor,
                   var: Tensor) -> tuple[Tensor, Tensor]:
    """Analytic per-channel moments of a convolution's or linear layer's
    output for inputs independent across channels and positions with the
    given per-channel moments (exact away from zero padding).

    ``mean_out[o] = sum_{i, t} W[o, i, t] mean[i] + b[o]`` and
    ``var_out[o] = sum_{i, t} W[o, i, t]^2 var[i]``.

    Args:
        operator: ``nn.ConvNd`` (any ``groups``) or ``nn.Linear``.
        mean, var: ``(G, C_in)``.

    Returns:
        ``(mean_out, var_out)``, each ``(G, C_out)``.
    """
    w_sum, w_sq_sum, groups = _weight_sums(operator)
    g = mean.shape[0]
    mean_in = mean.reshape(g, groups, -1)
    var_in = var.reshape(g, groups, -1)
    mean_out = torch.einsum('bgi,goi->bgo', mean_in, w_sum).reshape(g, -1)
    var_out = torch.einsum('bgi,goi->bgo', var_in, w_sq_sum).reshape(g, -1)
    if getattr(operator, 'bias', None) is not None:
        mean_out = mean_out + operator.bias
    return mean_out, var_out


def sampled_moments(operator: nn.Module, mean: Tensor, var: Tensor,
                    rectify: bool, samples: int, size: int,
                    generator: Optional[torch.Generator] = None
                    ) -> tuple[Tensor, Tensor]:
    """The authors' predictor: draw a synthetic input from
    ``N(mean, var)`` (``ReLU`` of it when ``rectify``), run ``operator`` on
    it (its own weights, stride, padding, dilation) and take the biased
    moments of the output per group.

    Args:
        operator: ``nn.ConvNd`` or ``nn.Linear``.
        mean, var: ``(G, C_in)`` moments of the pre-activation input.
        rectify: apply ``ReLU`` to the sample.
        samples: synthetic samples per group.
        size: spatial extent of the synthetic input in every dimension.
        generator: source of the noise (fix it to make the prediction
            deterministic, e.g. for ``gradcheck``).

    Returns:
        ``(mean_out, var_out)``, each ``(G, C_out)``.
    """
    g, c = mean.shape
    spatial = (size,) * (operator.weight.dim() - 2)
    noise = torch.randn((g, samples, c) + spatial, generator=generator,
                        dtype=mean.dtype, device=mean.device)
    view = (g, 1, c) + (1,) * len(spatial)
    sample = mean.reshape(view) + torch.sqrt(var.reshape(view) + _TINY) * noise
    if rectify:
        sample = F.relu(sample)
    out = operator(sample.reshape((g * samples, c) + spatial))
    return group_moments(out, samples)


def kalman_combine(obs_mean: Tensor, obs_var: Tensor, pred_mean: Tensor,
                   pred_var: Tensor, prior_weight: float
                   ) -> tuple[Tensor, Tensor]:
    """The KN update with ``p = prior_weight`` and gain ``q = 1 - p``:
    ``mean = q obs + p pred`` and
    ``var = q var_obs + p var_pred + q p (mean_obs - mean_pred)^2``
    (the variance of the two-component mixture). Shapes broadcast."""
    q = 1.0 - prior_weight
    gap = obs_mean - pred_mean
    mean = q * obs_mean + prior_weight * pred_mean
    var = q * obs_var + prior_weight * pred_var + q * prior_weight * gap * gap
    return mean, var


def prior_diverges(pred_var: Tensor, obs_var: Tensor, ratio: float,
                   eps: float) -> Tensor:
    """One decision per layer: the mean over channels and groups of
    ``var_pred / var_obs`` is at least ``ratio`` (or not finite).

    Returns a 0-dim bool tensor on the statistics' device (not a Python
    bool: the decision is applied with ``torch.where``, so a training step
    does not wait for it)."""
    mean_ratio = (pred_var / (obs_var + eps)).mean()
    return ~(torch.isfinite(mean_ratio) & (mean_ratio < ratio))


def kalman_combine_where(diverged: Tensor, obs_mean: Tensor, obs_var: Tensor,
                         pred_mean: Tensor, pred_var: Tensor,
                         prior_weight: float) -> tuple[Tensor, Tensor]:
    """:func:`kalman_combine`, or the observation itself where the 0-dim
    bool ``diverged`` is true, selected on the device.

    A diverged prediction (possibly inf or NaN) is replaced by the
    observation before combining, so the branch that is not taken stays
    finite and passes exactly zero gradient to the prediction."""
    safe_mean = torch.where(diverged, obs_mean, pred_mean)
    safe_var = torch.where(diverged, obs_var, pred_var)
    mean, var = kalman_combine(obs_mean, obs_var, safe_mean, safe_var,
                               prior_weight)
    return (torch.where(diverged, obs_mean, mean),
            torch.where(diverged, obs_var, var))


def normalize(x: Tensor, mean: Tensor, var: Tensor, eps: float,
              weight: Optional[Tensor], bias: Optional[Tensor]) -> Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` with per-group
    statistics.

    Args:
        x: ``(N, C, *)``.
        mean, var: ``(G, C)`` with ``N`` a multiple of ``G``.
        weight, bias: ``(C,)`` or None.
    """
    n, c = x.shape[:2]
    g = mean.shape[0]
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    grouped = x.reshape(g, n // g, c, -1)
    out = torch.addcmul(shift[:, None, :, None], grouped,
                        scale[:, None, :, None])
    return out.reshape(x.shape)


def moments_shape_ok(stats: Optional[Sequence[Tensor]],
                     groups: int, channels: int) -> bool:
    """``stats`` is a ``(mean, var)`` pair of ``(groups, channels)``."""
    return (stats is not None
            and tuple(stats[0].shape) == (groups, channels))
