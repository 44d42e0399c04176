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
the authors' checkpoints, plus the choice buffers and the radius
(``state_dict(keep_vars=True)`` returns the live parameters instead).

Everything a training step does with this state happens on the device:
SparsestMax runs branch-free, the one-hot and the learned weights are
selected with ``torch.where`` on the choice buffers, and a new choice is
written into them in place. No value is read back to the host and no
Python value changes when a layer freezes, so a CUDA step does not wait on
the GPU and ``torch.compile`` neither breaks the graph nor recompiles as
the layers of a model freeze one after another. A frozen layer therefore
still runs SN's statistics with one-hot weights; the cheaper dedicated
modules for fixed layers come from :mod:`mmnorm.deploy` for inference.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..ops.sparsestmax import sparsestmax
from ..ops.switchable import chosen_weights
from .sn import SwitchableNorm

_NOT_FIXED = -1
_BN = 2  # index of the BN branch in [IN, LN, BN]

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
        # Eager only: whether the host has seen, without waiting for the
        # device, that both choices are set (see _frozen_on_host).
        self._host_frozen = False
        self._host_choices: tuple[int, ...] = ()
        self._host_probe: Optional[tuple[Tensor, object]] = None

    # Host reads: for users, logs and tests, never in forward.
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

    def _frozen_on_host(self) -> bool:
        """True once the host knows that both choices are set, learnt
        without ever waiting for the device; eager mode only.

        Every forward of a layer not yet known to be frozen copies the
        choices into host memory asynchronously (pinned memory and a CUDA
        event on the GPU, a plain copy on the CPU) and looks at the copy of
        an earlier forward only once its event has completed
        (``Event.query`` does not block). Once frozen, a layer stays frozen
        (only ``load_state_dict`` can change the choices, and it resets
        this), so the answer may come a step late but is never wrong.
        Under ``torch.compile``, export tracing and CUDA graph capture
        this is skipped: the traced graph keeps the branch-free
        selection.
        """
        if self._host_frozen:
            return True
        device = self.mean_choice.device
        if (torch.compiler.is_compiling() or torch.jit.is_tracing()
                or device.type not in ('cpu', 'cuda')):
            return False
        if device.type == 'cuda' and torch.cuda.is_current_stream_capturing():
            return False
        probe = self._host_probe
        if probe is not None and (probe[1] is None or probe[1].query()):
            self._host_probe = None
            # the host copy's memory, read without dispatching anything
            choices = tuple(int(c) for c in probe[0].numpy())
            if _NOT_FIXED not in choices:
                self._host_frozen = True
                self._host_choices = choices
                return True
        if self._host_probe is None:
            choices = torch.stack([self.mean_choice, self.var_choice])
            on_gpu = device.type == 'cuda'
            host = torch.empty(2, dtype=torch.long, pin_memory=on_gpu)
            host.copy_(choices, non_blocking=on_gpu)
            event = None
            if on_gpu:
                event = torch.cuda.Event()
                event.record()
            self._host_probe = (host, event)
        return False

    def _load_from_state_dict(self, *args, **kwargs):
        self._host_frozen = False
        self._host_choices = ()
        self._host_probe = None
        super()._load_from_state_dict(*args, **kwargs)

    def __getstate__(self):
        # deepcopy / pickle (e.g. EMA models): events do not copy
        state = dict(super().__getstate__())
        state['_host_probe'] = None
        return state

    def _choices(self) -> Tensor:
        """``(2,)`` long: the mean and variance choices (-1: learned)."""
        return torch.stack([self.mean_choice, self.var_choice])

    def _learned_weights(self, flat: bool, choices: Tensor,
                         record: bool) -> Tensor:
        """``(2, 3)`` SparsestMax weights of the mean and variance lambdas.

        A frozen row's lambda enters SparsestMax detached (its result is
        replaced by the one-hot of the choice, and its gradient must be
        exactly 0, also for an inf incoming gradient). With ``record``, a
        one-hot result of a row still learning becomes its choice (in
        place, on the device).
        """
        logits = torch.stack([self.mean_weight, self.var_weight])
        frozen = (choices != _NOT_FIXED).unsqueeze(-1)
        learned = sparsestmax(
            torch.where(frozen, logits.detach(), logits),
            self.radius, self._available(flat))
        if record:
            with torch.no_grad():
                vertex = (learned > 0).sum(-1) == 1
                new = torch.where(
                    frozen.squeeze(-1), choices,
                    torch.where(vertex, learned.argmax(-1), _NOT_FIXED))
                self.mean_choice.copy_(new[0])
                self.var_choice.copy_(new[1])
        return learned

    def mixing_weights(self, flat: bool = False) -> tuple[Tensor, Tensor]:
        """``(3,)`` mean and variance weights: the one-hot of a row's
        choice where it is set, else SparsestMax of its lambda."""
        choices = self._choices()
        learned = self._learned_weights(flat, choices, record=False)
        return (chosen_weights(learned[0], choices[0]),
                chosen_weights(learned[1], choices[1]))

    def _op_weights(self, flat: bool):
        # The op builds the one-hot of a chosen row itself (and gives its
        # lambda an exactly-zero gradient), from the choice buffers on the
        # device. Recording happens in a training step, also with
        # norm_eval=True (eval mode while the lambdas still learn); not in
        # validation/test, which run without grad.
        choices = self._choices()
        if self._frozen_on_host():
            # both rows chosen: SparsestMax (about 300 ATen ops forward
            # and backward, inside its op) would be thrown away; the
            # lambdas stay in the graph through the norm op
            return self.mean_weight, self.var_weight, None, choices
        record = torch.is_grad_enabled() and self.mean_weight.requires_grad
        learned = self._learned_weights(flat, choices, record)
        return learned[0], learned[1], None, choices

    def _track(self, batch_mean: Tensor, batch_var: Tensor,
               valid: Optional[Tensor] = None) -> None:
        # A layer whose mean and variance are both frozen to a source other
        # than BN no longer tracks BN statistics: decided on the device, or
        # on the host once it knows both choices (eager; saves small ops).
        if self._host_frozen:
            if _BN in self._host_choices:
                super()._track(batch_mean, batch_var, valid)
            return
        uses_bn = ((self.mean_choice == _NOT_FIXED)
                   | (self.mean_choice == _BN)
                   | (self.var_choice == _NOT_FIXED)
                   | (self.var_choice == _BN))
        super()._track(batch_mean, batch_var,
                       uses_bn if valid is None else uses_bn & valid)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if keep_vars:
            # the live parameters were asked for (exporters trace with
            # them: the forward still reads the lambdas)
            return
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
