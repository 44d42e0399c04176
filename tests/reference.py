"""Independent, straightforward float64 implementation of SN for tests.

Written from the definition in the SN paper / the authors' code, without
sharing anything with mmnorm's fused implementation.
"""
import torch


def reference_sn(x, mean_logits, var_logits, weight, bias, eps=1e-5,
                 running_mean=None, running_var=None, using_bn=True,
                 mixing=None):
    """Returns (y, batch_mean, batch_var) for x of shape (N, C, *).

    ``mixing``: optional ``(w_mean, w_var)`` used instead of the softmax of
    the logits (for SSN).
    """
    n, c = x.shape[:2]
    flat = x.dim() == 2
    xs = x.reshape(n, c, -1)
    m = xs.shape[2]
    available = torch.tensor([not flat, True, using_bn])
    w_mean = torch.softmax(mean_logits.masked_fill(~available, -1e30), 0)
    w_var = torch.softmax(var_logits.masked_fill(~available, -1e30), 0)
    if mixing is not None:
        w_mean, w_var = mixing
    if flat:
        mean_in = xs[:, :, 0]
        var_in = torch.zeros_like(mean_in)
        mean_ln = x.mean(1, keepdim=True)
        var_ln = (x.var(1, keepdim=True, unbiased=True) if c > 1
                  else torch.zeros(n, 1, dtype=x.dtype))
        mean_bn = x.mean(0)
        var_bn = (x.var(0, unbiased=True) if n > 1
                  else torch.zeros(c, dtype=x.dtype))
    else:
        mean_in = xs.mean(2)
        var_in = (((xs - mean_in[..., None]) ** 2).sum(2) / (m - 1) if m > 1
                  else torch.zeros_like(mean_in))
        mean_ln = mean_in.mean(1, keepdim=True)
        var_ln = (var_in + mean_in ** 2).mean(1, keepdim=True) - mean_ln ** 2
        mean_bn = mean_in.mean(0)
        var_bn = (var_in + mean_in ** 2).mean(0) - mean_bn ** 2
    batch_mean, batch_var = mean_bn, var_bn
    if running_mean is not None:
        mean_bn, var_bn = running_mean, running_var
    mean = w_mean[0] * mean_in + w_mean[1] * mean_ln + w_mean[2] * mean_bn
    var = w_var[0] * var_in + w_var[1] * var_ln + w_var[2] * var_bn
    y = (xs - mean[..., None]) / torch.sqrt(var[..., None] + eps)
    if weight is not None:
        y = y * weight[None, :, None] + bias[None, :, None]
    return y.reshape(x.shape), batch_mean, batch_var
