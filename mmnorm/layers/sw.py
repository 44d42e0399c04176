"""Switchable Whitening (Pan et al., ICCV 2019): ``type='SW'`` and
``type='SyncSW'``.

SW whitens groups of ``c`` channels with a learned mixture of batch and
instance whitening (and, for ``sw_type`` 3 and 5, LN, BN and IN), the way
SN mixes standardizations; the math is in :mod:`mmnorm.ops.whitening`.

Differences from the authors' code (``docs/switchable_whitening.md``):

* ``sw_type=5`` mixes the covariances with all five weights (the authors'
  code uses the BW and IW weights twice, so the BN and IN covariance
  weights are never used);
* ``running_cov`` starts at the identity (theirs at zero: an untrained
  layer in eval mode divided by about ``sqrt(eps)``);
* SyncSW combines per-process counts, means and centred scatter matrices,
  exact for unequal per-process batches (theirs averages per-process
  means and covariances);
* ``momentum`` follows PyTorch's convention (the authors' 0.99 keep factor
  is ``momentum=0.01``, the default here);
* the mixing weights are ``mean_weight``/``var_weight`` (theirs
  ``sw_mean_weight``/``sw_var_weight``; see
  ``tools/model_converters/official_sw_to_mmnorm.py``), so that mmnorm's
  SN optimizer rules (no weight decay on the mixing weights) apply.

SW is not a ``_BatchNorm``: its buffers are ``running_mean`` ``(G, c, 1)``
and ``running_cov`` ``(G, c, c)``.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..ops import dispatch
from ..ops.distributed import distributed_world_size
from ..ops.plain import switchable_whitening_plain
from ..ops.whitening import (
    SW_SOURCES,
    batch_stats_local,
    mix_statistics,
    newton_whitening,
    stat_dtype,
    switchable_whitening,
    sync_batch_stats,
)
from .sn import MIXING_WEIGHT_FLAG

_ALLOWED = ('num_features, num_pergroup, sw_type, T, tie_weight, eps, '
            'momentum, affine')


class SwitchableWhitening(nn.Module):
    """Switchable Whitening over ``(N, C)``, ``(N, C, L)``,
    ``(N, C, H, W)`` and ``(N, C, T, H, W)`` input.

    Args:
        num_features: channel count ``C``.
        num_pergroup: channels per whitening group ``c`` (``C`` must be a
            multiple). Default: 16.
        sw_type: 2 = [BW, IW] (the paper's main setting), 3 = [BW, IW, LN],
            5 = [BW, IW, BN, IN, LN]. Default: 2.
        T: Newton iterations. Default: 5.
        tie_weight: one set of mixing weights for means and covariances
            (no ``var_weight``). Default: False.
        eps: added to the diagonal of the mixed covariance. Default: 1e-5.
        momentum: weight of the newest batch in ``running_mean`` and
            ``running_cov`` (PyTorch convention; ``None``: cumulative
            average). Default 0.01, the authors' keep factor 0.99; their
            ImageNet script keeps 0.9 (``momentum=0.1``).
        affine: learn a per-channel ``weight`` and ``bias``. Default: True.

    Shape:
        - Input: ``(N, C, *S)`` with ``S`` of 0 to 3 dimensions; ``(N, C)``
          is whitened as ``(N, C, 1)``: each sample is its own IW mean
          (covariance 0), exactly as a ``1 x 1`` map.
        - Output: same shape and dtype as the input.

    Buffers:
        running_mean: ``(G, c, 1)`` BW mean (starts at 0).
        running_cov: ``(G, c, c)`` biased BW covariance, without ``eps``
            (starts at ``I``).
        num_batches_tracked: batches folded into the two.

    Never NaN for finite input: ``1 x 1`` maps, batch size 1 and constant
    input give an IW (and BW) covariance of 0, and ``eps I`` keeps the
    mixed covariance positive definite (constant input maps to ``bias``).
    """

    _abbr_ = 'bn'  # BN-pretrained checkpoints keep their key names
    folds_into_conv = False  # per-sample statistics: never fold into a conv

    def __init__(self, num_features: int, num_pergroup: int = 16,
                 sw_type: int = 2, T: int = 5, tie_weight: bool = False,
                 eps: float = 1e-5, momentum: Optional[float] = 0.01,
                 affine: bool = True, **unknown: Any) -> None:
        super().__init__()
        name = type(self).__name__
        if unknown:
            raise TypeError(f'{name}: unknown argument(s) {sorted(unknown)}; '
                            f'allowed are {_ALLOWED}')

        def positive_int(arg: str, value: Any) -> None:
            if (isinstance(value, bool) or not isinstance(value, int)
                    or value < 1):
                raise ValueError(f'{name}: {arg} must be a positive int, '
                                 f'got {value!r}')

        positive_int('num_features', num_features)
        positive_int('num_pergroup', num_pergroup)
        if num_features % num_pergroup:
            raise ValueError(
                f'{name}: num_features={num_features} is not divisible by '
                f'num_pergroup={num_pergroup} (the channels per whitening '
                f'group); choose a divisor of {num_features}')
        if isinstance(sw_type, bool) or sw_type not in SW_SOURCES:
            raise ValueError(
                f'{name}: sw_type must be one of 2 ([BW, IW]), 3 ([BW, IW, '
                f'LN]) or 5 ([BW, IW, BN, IN, LN]), got {sw_type!r}')
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f'{name}: T (Newton iterations) must be an int '
                             f'>= 1, got {T!r}')
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) \
                or not eps > 0 or not math.isfinite(eps):
            raise ValueError(f'{name}: eps must be a finite number > 0 (it '
                             f'keeps the covariance invertible), got {eps!r}')
        if momentum is not None and (
                isinstance(momentum, bool)
                or not isinstance(momentum, (int, float))
                or not 0.0 <= momentum <= 1.0):
            raise ValueError(f'{name}: momentum must be in [0, 1] or None '
                             f'(PyTorch convention), got {momentum!r}')
        for flag, value in (('tie_weight', tie_weight), ('affine', affine)):
            if not isinstance(value, bool):
                raise TypeError(f'{name}: {flag} must be a bool, '
                                f'got {value!r}')
        self.num_features = num_features
        self.num_pergroup = num_pergroup
        self.num_groups = num_features // num_pergroup
        self.sw_type = sw_type
        self.T = T
        self.tie_weight = tie_weight
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = affine
        sources = len(SW_SOURCES[sw_type])
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter('weight', None)
            self.register_parameter('bias', None)
        self.mean_weight = nn.Parameter(torch.ones(sources))
        setattr(self.mean_weight, MIXING_WEIGHT_FLAG, True)
        if tie_weight:
            self.register_parameter('var_weight', None)
        else:
            self.var_weight = nn.Parameter(torch.ones(sources))
            setattr(self.var_weight, MIXING_WEIGHT_FLAG, True)
        g, c = self.num_groups, num_pergroup
        self.register_buffer('running_mean', torch.zeros(g, c, 1))
        self.register_buffer('running_cov', torch.eye(c).repeat(g, 1, 1))
        self.register_buffer('num_batches_tracked',
                             torch.tensor(0, dtype=torch.long))

    # ------------------------------------------------------------------
    @property
    def sources(self) -> tuple[str, ...]:
        """Names of the mixed statistics, e.g. ``('bw', 'iw')``."""
        return SW_SOURCES[self.sw_type]

    def reset_running_stats(self) -> None:
        self.running_mean.zero_()
        self.running_cov.copy_(torch.eye(self.num_pergroup).to(
            self.running_cov).expand_as(self.running_cov))
        self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        with torch.no_grad():
            if self.affine:
                self.weight.fill_(1.0)
                self.bias.zero_()
            self.mean_weight.fill_(1.0)
            if self.var_weight is not None:
                self.var_weight.fill_(1.0)

    def mixing_weights(self) -> tuple[Tensor, Tensor]:
        """Softmax weights over :attr:`sources` for means and covariances
        (the same tensor twice with ``tie_weight``)."""
        mean_w = self.mean_weight.softmax(0)
        var_w = (mean_w if self.var_weight is None
                 else self.var_weight.softmax(0))
        return mean_w, var_w

    def ratios(self) -> dict[str, dict[str, float]]:
        """Mixing ratios by source name, e.g.
        ``{'mean': {'bw': .5, 'iw': .5}, 'var': {...}}``."""
        with torch.no_grad():
            mean_w, var_w = self.mixing_weights()
        return {kind: dict(zip(self.sources, w.tolist()))
                for kind, w in (('mean', mean_w), ('var', var_w))}

    # ------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        name = type(self).__name__
        if not 2 <= x.dim() <= 5:
            raise ValueError(
                f'{name}: expected input of rank 2-5 ((N, C), (N, C, L), '
                f'(N, C, H, W) or (N, C, T, H, W)), got shape '
                f'{tuple(x.shape)}')
        if x.shape[1] != self.num_features:
            raise ValueError(
                f'{name}: input has {x.shape[1]} channels (dim 1) but the '
                f'layer was built with num_features={self.num_features}')
        if 0 in x.shape[2:]:
            raise ValueError(f'{name}: got an input without elements per '
                             f'channel, shape {tuple(x.shape)}')
        if not x.is_floating_point():
            raise TypeError(f'{name}: input must be a floating point tensor, '
                            f'got {x.dtype}')

    def _synchronized(self) -> bool:
        return False

    def _batch_stats(self, mu_i: Tensor, sigma_i: Tensor, pixels: int
                     ) -> tuple[Tensor, Tensor]:
        return batch_stats_local(mu_i, sigma_i)

    def _params(self) -> list[Tensor]:
        params = [self.mean_weight]
        if self.var_weight is not None:
            params.append(self.var_weight)
        if self.affine:
            params += [self.weight, self.bias]
        return params

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        shape = x.shape
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        use_batch = self.training
        if x.shape[0] == 0 and not (use_batch and self._synchronized()):
            used = sum(p.sum() for p in self._params())
            return (x * 0 + used * 0).view(shape)
        g, c = self.num_groups, self.num_pergroup
        pixels = math.prod(x.shape[2:])
        dtype = stat_dtype(x)
        running = (None if use_batch else
                   (self.running_mean.to(dtype).clone(),
                    self.running_cov.to(dtype).clone()))

        def small(mu_i: Tensor, sigma_i: Tensor, *params: Tensor):
            params = [p.to(dtype) for p in params]
            mean_lam = params.pop(0)
            var_lam = params.pop(0) if self.var_weight is not None else None
            mean_w = mean_lam.softmax(0)
            var_w = mean_w if var_lam is None else var_lam.softmax(0)
            if running is None:
                mu_b, sigma_b = self._batch_stats(mu_i, sigma_i, pixels)
            else:
                mu_b, sigma_b = running
            offset, cov = mix_statistics(mu_i, sigma_i, mu_b, sigma_b,
                                         mean_w, var_w, self.sw_type,
                                         pixels, self.eps)
            a = newton_whitening(cov, self.T)
            if params:  # y = gamma W (x - mu) + beta
                weight, bias = params
                a = weight.view(g, c, 1) * a
                return a, a @ offset + bias.view(g, c, 1), mu_b, sigma_b
            return a, a @ offset, mu_b, sigma_b

        # Exporters and torch.compile take the plain ops (autograd through
        # them): the hand-written backward differentiates the small
        # matrices with torch.autograd.grad, which Dynamo cannot trace.
        if dispatch.is_exporting() or torch.compiler.is_compiling():
            y, mu_b, sigma_b = switchable_whitening_plain(x, c, small,
                                                          self._params())
        else:
            y, mu_b, sigma_b = switchable_whitening(x, c, small,
                                                    self._params())
        if use_batch:
            self._track(mu_b, sigma_b)
        return y.view(shape)

    @torch.no_grad()
    def _track(self, mu_b: Tensor, sigma_b: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        # momentum=None: a cumulative average, 1 / count on the device
        factor = (self.num_batches_tracked.to(self.running_mean).reciprocal()
                  if self.momentum is None else self.momentum)
        self.running_mean.lerp_(mu_b.to(self.running_mean), factor)
        self.running_cov.lerp_(sigma_b.to(self.running_cov), factor)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """A BatchNorm checkpoint (``(C,)`` ``running_mean`` and
        ``running_var``) loads as BW statistics with a diagonal
        covariance; ``weight`` and ``bias`` load as they are."""
        mean_key, var_key = prefix + 'running_mean', prefix + 'running_var'
        mean = state_dict.get(mean_key)
        if mean is not None and mean.dim() == 1 \
                and mean.numel() == self.num_features:
            g, c = self.num_groups, self.num_pergroup
            state_dict[mean_key] = mean.reshape(g, c, 1)
            var = state_dict.pop(var_key, None)
            if var is not None and prefix + 'running_cov' not in state_dict:
                state_dict[prefix + 'running_cov'] = torch.diag_embed(
                    var.reshape(g, c))
        super()._load_from_state_dict(state_dict, prefix, local_metadata,
                                      strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f'{self.num_features}, num_pergroup={self.num_pergroup}, '
                f'sw_type={self.sw_type}, T={self.T}, '
                f'tie_weight={self.tie_weight}, eps={self.eps}, '
                f'momentum={self.momentum}, affine={self.affine}')


class SyncSwitchableWhitening(SwitchableWhitening):
    """SW with the BW statistics synchronized over a process group while
    training (see :func:`mmnorm.ops.whitening.sync_batch_stats`): equal to
    SW on the concatenated batch, also for unequal per-process batches.
    Without an initialized process group, with one process, or in eval
    mode it is exactly SW.

    Same arguments as :class:`SwitchableWhitening`; ``process_group``
    (Python only) restricts the synchronization to a group.
    """

    def __init__(self, num_features: int, *args: Any,
                 process_group: Optional[object] = None,
                 **kwargs: Any) -> None:
        super().__init__(num_features, *args, **kwargs)
        self.process_group = process_group

    def _synchronized(self) -> bool:
        return self.training and distributed_world_size(
            self.process_group) > 1

    def _batch_stats(self, mu_i: Tensor, sigma_i: Tensor, pixels: int
                     ) -> tuple[Tensor, Tensor]:
        if self._synchronized():
            return sync_batch_stats(mu_i, sigma_i, pixels,
                                    self.process_group)
        return batch_stats_local(mu_i, sigma_i)


def _options(layer: SwitchableWhitening) -> dict:
    return dict(num_pergroup=layer.num_pergroup, sw_type=layer.sw_type,
                T=layer.T, tie_weight=layer.tie_weight, eps=layer.eps,
                momentum=layer.momentum, affine=layer.affine)


def _swap(module: nn.Module, src: type, dst: type, **extra: Any
          ) -> nn.Module:
    if type(module) is src:
        new = dst(module.num_features, **_options(module), **extra)
        new.to(device=module.running_cov.device,
               dtype=module.mean_weight.dtype)
        new.load_state_dict(module.state_dict())
        for name, param in new.named_parameters():
            param.requires_grad_(getattr(module, name).requires_grad)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        swapped = _swap(child, src, dst, **extra)
        if swapped is not child:
            setattr(module, name, swapped)
    return module


def convert_sync_sw(module: nn.Module,
                    process_group: Optional[object] = None) -> nn.Module:
    """Replace every SW layer by SyncSW (children in place; returns the
    converted module). Call it before building the optimizer."""
    extra = {} if process_group is None else dict(
        process_group=process_group)
    return _swap(module, SwitchableWhitening, SyncSwitchableWhitening,
                 **extra)


def revert_sync_sw(module: nn.Module) -> nn.Module:
    """Replace every SyncSW layer by plain SW."""
    return _swap(module, SyncSwitchableWhitening, SwitchableWhitening)


def _load_from_bn(layer: SwitchableWhitening, state: dict,
                  prefix: str = '') -> list:
    """Fill ``layer`` in place from a BN layer's entries in ``state`` (the
    BN loader of :mod:`mmnorm.compat.registry`): ``weight``/``bias`` as
    they are, ``running_mean`` regrouped, ``running_var`` as a diagonal
    ``running_cov``, ``num_batches_tracked``. Entries of another length
    are not used. Returns the keys used."""
    used = []
    g, c = layer.num_groups, layer.num_pergroup
    with torch.no_grad():
        for name in ('weight', 'bias', 'running_mean', 'running_var',
                     'num_batches_tracked'):
            value = state.get(prefix + name)
            if value is None:
                continue
            if name == 'num_batches_tracked':
                layer.num_batches_tracked.copy_(value)
            elif value.dim() != 1 or value.numel() != layer.num_features:
                continue
            elif name in ('weight', 'bias'):
                if getattr(layer, name) is None:
                    continue
                getattr(layer, name).copy_(value)
            elif name == 'running_mean':
                layer.running_mean.copy_(value.reshape(g, c, 1))
            else:
                layer.running_cov.copy_(torch.diag_embed(
                    value.reshape(g, c)))
            used.append(prefix + name)
    return used


def _register() -> None:
    """SW is not BN-shaped; SyncSW is its synchronized version, so
    ``sync_bn`` in a config and :func:`mmnorm.convert_sync_sn` turn SW
    into SyncSW (see :mod:`mmnorm.compat.registry`)."""
    from ..compat.registry import (
        register_bn_loader,
        register_norm_layer,
        register_sync_pair,
    )
    for cls in (SwitchableWhitening, SyncSwitchableWhitening):
        register_norm_layer(cls, bn_shaped=False)
        register_bn_loader(cls, _load_from_bn)
    register_sync_pair(SwitchableWhitening, SyncSwitchableWhitening)


_register()
