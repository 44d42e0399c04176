"""Sparse Switchable Normalization (Shao et al., 2019): ``type='SSN'``.

SSN computes the same statistics as SN but maps its lambdas to mixing
weights with SparsestMax, whose output is pushed toward a vertex of the
simplex as the radius grows (see :mod:`mmnorm.ops.sparsestmax`). The radius
lives in a buffer, set before every training iteration by
:class:`mmnorm.engine.SSNRadiusHook` (linear from 0 to 1 by default).

Once the mean (or variance) weights of a layer come out one-hot in a
training step (grad enabled, lambdas trainable; also with ``norm_eval``),
that choice is recorded in the ``mean_choice`` (``var_choice``)
buffer and the weights are frozen for good. Frozen weights are the one-hot
built from the buffer, so nothing the optimizer does to the lambda (SGD
momentum, weight decay) can move them; the lambda still takes part in the
graph with an exactly-zero gradient, so DDP with
``find_unused_parameters=False`` sees no unused parameter. State dicts
store the one-hot in ``mean_weight``/``var_weight`` for fixed layers, like
the authors' checkpoints, plus the choice buffers and the radius.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..ops.sparsestmax import sparsestmax
from ..ops.switchable import SwitchableMix
from .fixed import FixedSourceMix
from .sn import SwitchableNorm

_NOT_FIXED = -1


class _FrozenWeights(torch.autograd.Function):
    """Returns a copy of the frozen ``(3,)`` one-hot whose gradient to the
    lambdas is exactly zero (also when the incoming gradient is inf),
    keeping a frozen lambda in the graph so that DDP counts it as used."""

    @staticmethod
    def forward(ctx, logits: Tensor, one_hot: Tensor) -> Tensor:
        return one_hot.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad.new_zeros(grad.shape), None


class SparseSwitchableNorm(SwitchableNorm):
    """Switchable Normalization with SparsestMax mixing weights.

    Takes the same arguments as :class:`SwitchableNorm`, and has these
    buffers besides SN's.

    Buffers:
        radius: ``()`` SparsestMax radius, set by ``SSNRadiusHook``.
        mean_choice, var_choice: ``()`` int, index in [IN, LN, BN] of the
            frozen choice, or -1 while the weights are still learned.
    """

    def __init__(self, num_features: int, eps: float = 1e-5,
                 momentum: Optional[float] = 0.1, affine: bool = True,
                 using_bn: bool = True, using_moving_average: bool = True,
                 **unknown) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum,
                         affine=affine, using_bn=using_bn,
                         using_moving_average=using_moving_average,
                         **unknown)
        self.register_buffer('radius', torch.zeros(()))
        self.register_buffer('mean_choice',
                             torch.full((), _NOT_FIXED, dtype=torch.long))
        self.register_buffer('var_choice',
                             torch.full((), _NOT_FIXED, dtype=torch.long))
        self._fixed_mixes: dict = {}
        self._one_hots: dict = {}

    def _read_choices(self) -> tuple[int, int]:
        return int(self.mean_choice), int(self.var_choice)

    @property
    def mean_fixed(self) -> bool:
        return int(self.mean_choice) != _NOT_FIXED

    @property
    def var_fixed(self) -> bool:
        return int(self.var_choice) != _NOT_FIXED

    @property
    def fixed(self) -> bool:
        """Both the mean and the variance weights are frozen."""
        return self.mean_fixed and self.var_fixed

    def set_radius(self, radius: float) -> None:
        if not 0.0 <= radius:
            raise ValueError(f'{type(self).__name__}: radius must be >= 0, '
                             f'got {radius}')
        self.radius.fill_(radius)

    def _weights(self, logits: Tensor, choice: Tensor, available: Tensor,
                 record: bool) -> Tensor:
        """(3,) weights from lambdas; with ``record``, a one-hot result
        becomes the frozen choice."""
        chosen = int(choice)
        if chosen != _NOT_FIXED:
            one_hot = self._one_hot(chosen, logits)
            if torch.is_grad_enabled() and logits.requires_grad:
                return _FrozenWeights.apply(logits, one_hot)
            return one_hot.clone()  # the cache must not be handed out
        index = torch.nonzero(available).flatten()
        sub = sparsestmax(logits[index], float(self.radius))
        weights = torch.zeros_like(logits).index_put((index,), sub)
        if record and int((sub > 0).sum()) == 1:
            choice.fill_(int(index[int(sub.argmax())]))
        return weights

    def _one_hot(self, choice: int, like: Tensor) -> Tensor:
        """The (3,) one-hot of ``choice``, cached: a fixed layer's forward
        costs one small op for its weights."""
        key = (choice, like.dtype, like.device)
        one_hot = self._one_hots.get(key)
        if one_hot is None:
            one_hot = torch.zeros(3, dtype=like.dtype, device=like.device)
            one_hot[choice] = 1.0
            self._one_hots[key] = one_hot
        return one_hot

    def _mix(self, flat: bool) -> SwitchableMix:
        """A fully fixed layer computes only the statistics it uses."""
        choices = self._read_choices()
        if _NOT_FIXED in choices:
            return super()._mix(flat)
        key = (*choices, flat)
        if key not in self._fixed_mixes:
            self._fixed_mixes[key] = FixedSourceMix(*key)
        return self._fixed_mixes[key]

    def _track(self, batch_mean: Tensor, batch_var: Tensor) -> None:
        # A fixed layer that uses no BN statistics no longer computes them.
        choices = self._read_choices()
        if _NOT_FIXED not in choices and 2 not in choices:
            return
        super()._track(batch_mean, batch_var)

    def mixing_weights(self, flat: bool = False) -> tuple[Tensor, Tensor]:
        available = self._available(flat)
        return (self._weights(self.mean_weight, self.mean_choice, available,
                              False),
                self._weights(self.var_weight, self.var_choice, available,
                              False))

    def _kernel_weight_choices(self) -> Optional[tuple[int, int]]:
        # Frozen one-hots only: SparsestMax stays in Python.
        choices = self._read_choices()
        return None if _NOT_FIXED in choices else choices

    def _forward_weights(self, flat: bool) -> tuple[Tensor, Tensor]:
        available = self._available(flat)
        # A training step, also with norm_eval=True (eval mode while the
        # lambdas still learn); not validation/test, which run without grad.
        record = torch.is_grad_enabled() and self.mean_weight.requires_grad
        return (self._weights(self.mean_weight, self.mean_choice, available,
                              record),
                self._weights(self.var_weight, self.var_choice, available,
                              record))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # Fixed layers store the one-hot itself, like the authors' code.
        for name, choice in (('mean_weight', self.mean_choice),
                             ('var_weight', self.var_choice)):
            if int(choice) != _NOT_FIXED:
                one_hot = torch.zeros_like(getattr(self, name).detach())
                one_hot[int(choice)] = 1.0
                destination[prefix + name] = one_hot

    def extra_repr(self) -> str:
        return (f'{super().extra_repr()}, radius={float(self.radius):.3f}, '
                f'mean_choice={int(self.mean_choice)}, '
                f'var_choice={int(self.var_choice)}')
