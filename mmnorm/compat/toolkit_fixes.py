"""The wrappers behind :data:`mmnorm.compat.patches.PATCHES`.

Each ``name(original) -> replacement`` builds the replacement of one
toolkit function. All of them look layers up in
:mod:`mmnorm.compat.registry` when called and leave models without
registered layers to the original code.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase

from .registry import is_bn_like, is_norm_layer, registered_norm_layers

# what mmengine's parameter-wise rules call a norm layer
_NORM_BASES = (_BatchNorm, nn.modules.instancenorm._InstanceNorm,
               nn.GroupNorm, nn.LayerNorm)


def _has_registered(module: nn.Module) -> bool:
    return any(is_norm_layer(m) for m in module.modules())


def norm_units(module: nn.Module, plain: tuple[type, ...] = (_BatchNorm,)
               ) -> list[nn.Module]:
    """The normalization layers of ``module`` in ``modules()`` order: every
    registered layer (not what is inside it, e.g. IBN's ``BN`` part) and
    every other instance of ``plain``."""
    units: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        if is_norm_layer(m) or isinstance(m, plain):
            units.append(m)
            return
        for child in m.children():
            visit(child)

    visit(module)
    return units


def norm_eval_train(original: Callable) -> Callable:
    """``train(mode)`` of a toolkit module with ``norm_eval``: after the
    toolkit's own code, with ``norm_eval`` every BN-like layer (any
    ``_BatchNorm`` or registered layer) is in eval mode, whatever exact
    class the toolkit tested."""

    @functools.wraps(original)
    def train(self, mode: bool = True):
        out = original(self, mode)
        if mode and getattr(self, 'norm_eval', False):
            for m in self.modules():
                if is_bn_like(m):
                    m.eval()
        return out

    return train


def partial_bn(original: Callable) -> Callable:
    """mmaction2 ``ResNet._partial_bn``: freeze every norm layer but the
    first (eval mode, no gradient for any of its parameters), counting
    registered layers like the ``nn.BatchNorm2d`` layers mmaction2
    counts. For BN, the parameters are ``weight`` and ``bias``; an SN layer
    also keeps its mixing weights, a frozen BN is frozen entirely."""

    @functools.wraps(original)
    def _partial_bn(self) -> None:
        if not _has_registered(self):
            return original(self)
        from mmengine.logging import MMLogger
        MMLogger.get_current_instance().info(
            'Freezing the norm layers (BatchNorm2d and mmnorm layers) '
            'except the first one.')
        for m in norm_units(self, (nn.BatchNorm2d,))[1:]:
            m.eval()
            for param in m.parameters():
                param.requires_grad = False

    return _partial_bn


def _load_one(kind: str) -> Callable:

    def wrap(original: Callable) -> Callable:

        @functools.wraps(original)
        def load(bn, state_dict, module_name, loaded_param_names):
            if not is_norm_layer(bn):
                return original(bn, state_dict, module_name,
                                loaded_param_names)
            from ..converters import load_bn_entries
            load_bn_entries(bn, state_dict, module_name,
                            loaded_param_names, action=kind)

        return load

    return wrap


#: mmaction2 ``ResNet._load_bn_params`` (torchvision 2D checkpoints)
load_bn_params = _load_one('load')
#: mmaction2 ``ResNet3d._inflate_bn_params`` (2D -> 3D inflation)
inflate_bn_params = _load_one('inflate')


def load_state_dict(original: Callable) -> Callable:
    """mmengine ``load_state_dict(module, state_dict, ...)`` (used by
    ``load_checkpoint`` and ``init_cfg=Pretrained``): BN entries meant for
    a registered layer whose keys differ from BN's (IBN, SW) are first
    loaded through its BN loader and replaced by that layer's keys
    (:func:`mmnorm.converters.adapt_bn_state_dict`)."""

    @functools.wraps(original)
    def load(module, state_dict, *args, **kwargs):
        from mmengine.model import is_model_wrapper
        model = module.module if is_model_wrapper(module) else module
        if _has_registered(model):
            from ..converters import adapt_bn_state_dict
            state_dict = adapt_bn_state_dict(model, state_dict)
        return original(module, state_dict, *args, **kwargs)

    return load


def tsm_load_original_weights(original: Callable) -> Callable:
    """mmaction2 ``ResNetTSM.load_original_weights`` (TSM recipes,
    ``pretrained2d=True``) renames torchvision's BN keys to the model's
    and calls ``self.load_state_dict``: that call gets the same BN-loader
    adaptation as mmengine's loader, so IBN layers are filled from the BN
    entries."""

    @functools.wraps(original)
    def load(self, *args, **kwargs):
        if not _has_registered(self):
            return original(self, *args, **kwargs)
        from ..converters import adapt_bn_state_dict
        plain = self.load_state_dict

        def adapted(state_dict, *a, **k):
            return plain(adapt_bn_state_dict(self, state_dict), *a, **k)

        self.load_state_dict = adapted  # for this call only
        try:
            return original(self, *args, **kwargs)
        finally:
            del self.load_state_dict

    return load


class _NormView(_BatchNorm):
    """A ``_BatchNorm``-typed view of a layer (never constructed, never
    run): the same parameter, buffer and child tables, so type-based rules
    treat the layer's own parameters as a norm layer's."""

    def forward(self, *args):  # pragma: no cover - a view is never run
        raise RuntimeError('mmnorm: a norm view is not a layer')


def _norm_view(module: nn.Module, flatten: bool = False) -> nn.Module:
    view = _NormView.__new__(_NormView)
    view.__dict__.update(module.__dict__)
    if flatten:  # every parameter as its own, no children
        view._parameters = {n.replace('.', '_'): p
                            for n, p in module.named_parameters()}
        view._modules = {}
    return view


def norm_add_params(original: Callable) -> Callable:
    """``add_params(self, params, module, prefix, is_dcn_module)`` of
    mmengine's (and mmseg's) default optimizer constructor: a registered
    layer that is not a ``_BatchNorm`` gets the norm rules
    (``norm_decay_mult``, ``bias_decay_mult``) like BN."""

    @functools.wraps(original)
    def add_params(self, params, module, *args, **kwargs):
        if is_norm_layer(module) and not isinstance(module, _NORM_BASES):
            module = _norm_view(module)
        return original(self, params, module, *args, **kwargs)

    return add_params


@contextlib.contextmanager
def _units_as_norms(model: nn.Module) -> Iterator[None]:
    """Show every registered layer that is not a ``_BatchNorm`` as one
    ``_BatchNorm`` holding all its parameters, restored afterwards."""
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_norm_layer(child) and not isinstance(child, _BatchNorm):
                parent._modules[name] = _norm_view(child, flatten=True)
                swapped.append((parent, name, child))
    try:
        yield
    finally:
        for parent, name, child in swapped:
            parent._modules[name] = child


def tsm_add_params(original: Callable) -> Callable:
    """mmaction2 ``TSMOptimWrapperConstructor.add_params``: registered
    layers outside ``_BatchNorm`` (IBN, whose ``InstanceNorm2d`` it does
    not know) join its norm group instead of raising."""

    @functools.wraps(original)
    def add_params(self, params, model, **kwargs):
        if not _has_registered(model):
            return original(self, params, model, **kwargs)
        with _units_as_norms(model):
            return original(self, params, model, **kwargs)

    return add_params


def norm_states(original: Callable) -> Callable:
    """mmdet ``get_norm_states(module)`` (SyncNormHook): also the states
    of registered layers that are not ``_NormBase``."""

    @functools.wraps(original)
    def get_norm_states(module):
        states = original(module)
        for name, child in module.named_modules():
            if is_norm_layer(child) and not isinstance(child, _NormBase) \
                    and next(child.children(), None) is None:
                for key, value in child.state_dict().items():
                    states['.'.join([name, key])] = value
        return states

    return get_norm_states


def constant_init(original: Callable) -> Callable:
    """mmengine ``constant_init(module, val, bias=0)``: a registered layer
    without its own ``weight`` (IBN) is initialised through its parts."""

    @functools.wraps(original)
    def init(module, val, bias=0):
        if is_norm_layer(module) and getattr(module, 'weight', None) is None:
            for child in module.children():
                init(child, val, bias)
            return None
        return original(module, val, bias)

    return init


def _norm_flops(module: nn.Module, input: tuple, output) -> None:
    """Like mmcv's BN count: one operation per element, two with an
    affine ``weight``; a composite layer (IBN) counts nothing itself, its
    IN / BN parts are counted."""
    if next(module.children(), None) is not None:
        return
    flops = int(input[0].numel())
    if getattr(module, 'weight', None) is not None:
        flops *= 2
    module.__flops__ += flops


def flops_mapping(original: Callable) -> Callable:
    """mmcv ``get_modules_mapping()`` (FLOP counter): registered layers are
    counted like BN (:func:`_norm_flops`). A lower bound for SN, which
    also computes IN and LN statistics."""

    @functools.wraps(original)
    def get_modules_mapping():
        mapping = original()
        for cls in registered_norm_layers():
            mapping.setdefault(cls, _norm_flops)
        return mapping

    return get_modules_mapping


def mmaction_importable() -> None:
    """Before mmaction2's first submodule loads: make 1.2.0 importable
    (:mod:`mmnorm.compat.mmaction`)."""
    from .mmaction import make_importable
    make_importable()
