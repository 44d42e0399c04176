"""Instance-Batch Normalization (IBN-Net, Pan et al., 2018): ``type='IBN'``.

Part of the channels is instance-normalized (appearance invariance), the
rest batch-normalized (content discrimination)::

    y = cat(IN(x[:, :k]), BN(x[:, k:]))     k = int(C * ratio)

The two parts are real ``nn.InstanceNorm2d`` (affine, no running
statistics: per sample also at test time) and ``nn.BatchNorm2d`` modules
named ``IN`` and ``BN`` like the authors' checkpoints, so ``norm_eval``,
SyncBN conversion and BN checkpoints treat the BN part as BN. Any ratio in
(0, 1) works (the authors' split assumes ratio >= 0.5), and the IN part can
come first (IBN-a) or last (their DenseNet variant).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class IBN(nn.Module):
    """IN on ``int(C * ratio)`` channels, BN on the others.

    Args:
        num_features: channels ``C``.
        ratio: fraction of channels instance-normalized, in (0, 1).
        in_first: the IN channels come first (else last).
        eps, momentum: of both parts (BN momentum in PyTorch's convention).

    Shape:
        ``(N, C, H, W)`` in and out.
    """

    # build_norm_layer names the attribute 'bn<postfix>' (authors' keys:
    # layerX.Y.bn1.IN.weight, layerX.Y.bn1.BN.running_mean, ...)
    _abbr_ = 'bn'

    def __init__(self, num_features: int, ratio: float = 0.5,
                 in_first: bool = True, eps: float = 1e-5,
                 momentum: float = 0.1, **unknown) -> None:
        super().__init__()
        if unknown:
            raise TypeError(f'IBN: unknown argument(s) {sorted(unknown)}; '
                            'allowed are num_features, ratio, in_first, eps, '
                            'momentum')
        if not isinstance(num_features, int) or num_features < 2:
            raise ValueError('IBN: num_features must be an int >= 2, got '
                             f'{num_features!r}')
        if not 0 < ratio < 1:
            raise ValueError(f'IBN: ratio must be in (0, 1), got {ratio!r}')
        in_channels = int(num_features * ratio)
        if not 0 < in_channels < num_features:
            raise ValueError(
                f'IBN: ratio={ratio} leaves {in_channels} of {num_features} '
                'channels for IN; both parts need at least one channel')
        self.num_features = num_features
        self.in_channels = in_channels
        self.in_first = in_first
        self.IN = nn.InstanceNorm2d(in_channels, eps=eps, affine=True)
        self.BN = nn.BatchNorm2d(num_features - in_channels, eps=eps,
                                 momentum=momentum)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f'IBN: expected (N, {self.num_features}, H, W) '
                             f'input, got {tuple(x.shape)}')
        bn_channels = self.num_features - self.in_channels
        if self.in_first:
            x_in, x_bn = x.split([self.in_channels, bn_channels], dim=1)
            return torch.cat([self.IN(x_in), self.BN(x_bn)], dim=1)
        x_bn, x_in = x.split([bn_channels, self.in_channels], dim=1)
        return torch.cat([self.BN(x_bn), self.IN(x_in)], dim=1)

    def extra_repr(self) -> str:
        return (f'{self.num_features}, in_channels={self.in_channels}, '
                f'in_first={self.in_first}')

