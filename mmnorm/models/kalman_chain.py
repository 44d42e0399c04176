"""Wiring Kalman Normalization layers into chains.

A KN layer predicts its statistics from those of the KN layer before it
(:class:`~mmnorm.layers.kn.KalmanNorm`). Which layer that is depends on the
network, so it is set here, by two rules (docs/kalman_norm.md derives them):

* **ResNet backbones** (:func:`wire_resnet`, used by ``ResNetKN``): the chain
  follows the blocks. The stem's first KN has no prior. In a block with input
  state ``s`` (the pre-activation statistics whose ReLU is the block input),
  ``norm1`` predicts through ``conv1`` from ``ReLU(s)``, ``norm2``/``norm3``
  from the previous norm through ``ReLU`` and their conv, a projection
  shortcut's norm from ``ReLU(s)`` through its conv. The block's output state
  (its pre-ReLU sum) is the sum of the last norm's statistics and the
  shortcut's: the projection norm's statistics, or for an identity shortcut
  the moments of ``ReLU(s)`` - the post-activation form of the authors'
  "statistics add" rule.
* **Necks and heads** (:func:`wire_kalman_chains`): data flow. A ConvModule
  (conv -> KN -> activation) whose input tensor is exactly the output of
  another such ConvModule in the same forward pass predicts from the
  statistics that producer computed *for that tensor*; any other input starts
  a new chain (BN). Heads shared across pyramid levels therefore chain level
  by level. The record is cleared when the wired model's forward starts and
  ends.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ..layers.kn import KalmanNorm
from ..ops.kalman import rectified_moments

State = Optional[tuple[Tensor, Tensor]]


class LayerState:
    """The combined statistics of a KN layer in the current pass."""

    def __init__(self, layer: nn.Module) -> None:
        self.layer = layer
        if isinstance(layer, KalmanNorm):
            layer.kn_keep_state = True

    def value(self) -> State:
        return getattr(self.layer, 'kn_state', None)


class BlockOutputState:
    """The output state of a residual block, recorded by its forward hook."""

    def __init__(self, block: nn.Module) -> None:
        self.block = block

    def value(self) -> State:
        return getattr(self.block, 'kn_output_state', None)


class FixedState:
    """Statistics recorded with a tensor (data-flow chains)."""

    def __init__(self, state: State) -> None:
        self.state = state

    def value(self) -> State:
        return self.state


class Link:
    """A KN layer's predecessor: ``source`` statistics, through ``ReLU``
    when ``rectify``, then ``operator``. Implements
    :class:`~mmnorm.layers.kn.KalmanLink`."""

    def __init__(self, operator: nn.Module, source, rectify: bool) -> None:
        self.operator = operator
        self.source = source
        self.rectify = rectify

    def source_state(self) -> State:
        return self.source.value()


class Chain:
    """The layers and blocks a wired module keeps state in during a pass,
    cleared when the module's forward starts and ends (so no statistics
    leak across passes and a model at rest holds no graph)."""

    def __init__(self) -> None:
        self.layers: list[KalmanNorm] = []
        self.blocks: list[nn.Module] = []
        self.flow_layers: list[KalmanNorm] = []
        self.producers: dict[int, tuple[Tensor, State, bool]] = {}

    def reset(self) -> None:
        for layer in self.layers:
            layer.kn_state = None
        for layer in self.flow_layers:
            layer.kn_state = None
            layer.kn_link = None
        for block in self.blocks:
            block.kn_output_state = None
        self.producers.clear()


def _reset_before(module: nn.Module, args) -> None:
    module.kn_chain.reset()


def _reset_after(module: nn.Module, args, output) -> None:
    module.kn_chain.reset()


def _chain_of(root: nn.Module) -> Chain:
    """The chain held by ``root`` (created and hooked on first use)."""
    chain = getattr(root, 'kn_chain', None)
    if chain is None:
        chain = Chain()
        root.kn_chain = chain
        root.register_forward_pre_hook(_reset_before)
        root.register_forward_hook(_reset_after)
    return chain


def _link(chain: Chain, norm: nn.Module, operator: nn.Module, source,
          rectify: bool = True) -> None:
    if isinstance(norm, KalmanNorm):
        norm.kn_link = Link(operator, source, rectify)
        norm.kn_wired = True
        norm.kn_keep_state = True
        chain.layers.append(norm)


def _start(chain: Chain, norm: nn.Module) -> None:
    if isinstance(norm, KalmanNorm):
        norm.kn_wired = True
        norm.kn_keep_state = True
        chain.layers.append(norm)


# ---------------------------------------------------------------- ResNet


class _SumState:
    """Means and variances add (independent summands)."""

    def __init__(self, *parts) -> None:
        self.parts = parts

    def value(self) -> State:
        values = [part.value() for part in self.parts]
        if any(v is None for v in values):
            return None
        mean = sum(v[0] for v in values)
        var = sum(v[1] for v in values)
        return mean, var


class _RectifiedState:
    """The moments of ``ReLU`` of a Gaussian with the source's moments."""

    def __init__(self, source) -> None:
        self.source = source

    def value(self) -> State:
        state = self.source.value()
        return None if state is None else rectified_moments(*state)


def _record_block_output(block: nn.Module, args, output) -> None:
    block.kn_output_state = block.kn_output_rule.value()


def _conv_and_norm(sequential: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The conv and norm of a downsample ``Sequential`` ([AvgPool,] conv,
    norm); the average pooling of ``avg_down`` is taken as moment-neutral
    (it keeps means, and variances for spatially uncorrelated input only
    up to a factor: a documented approximation)."""
    convs = [m for m in sequential if isinstance(m, nn.modules.conv._ConvNd)]
    norms = [m for m in sequential
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return convs[0], norms[-1]


def _wire_block(chain: Chain, block: nn.Module, block_input) -> object:
    """Link the KN layers of an mmdet/mmseg ``BasicBlock``/``Bottleneck``
    and return the source of the block's output state."""
    names = ['1', '2', '3'] if hasattr(block, 'conv3') else ['1', '2']
    source = block_input
    for index in names:
        norm = getattr(block, f'norm{index}')
        _link(chain, norm, getattr(block, f'conv{index}'), source)
        source = LayerState(norm)
    if block.downsample is not None:
        conv, norm = _conv_and_norm(block.downsample)
        _link(chain, norm, conv, block_input)
        shortcut = LayerState(norm)
    else:
        shortcut = _RectifiedState(block_input)
    block.kn_output_rule = _SumState(source, shortcut)
    block.kn_output_state = None
    block.register_forward_hook(_record_block_output)
    chain.blocks.append(block)
    return BlockOutputState(block)


def wire_resnet(resnet: nn.Module) -> Chain:
    """Chain the KN layers of an mmdet/mmseg ``ResNet`` (any depth, 7x7 or
    deep stem, ``avg_down``, dilations) by the ResNet rule of the module
    docstring. Plugins and the stem's max pooling are outside the
    prediction (treated as identity). Layers that are not KN break the
    chain: their successor starts a new one.

    Returns:
        The :class:`Chain`, reset at every forward of ``resnet``.
    """
    chain = _chain_of(resnet)
    if getattr(resnet, 'deep_stem', False):
        source, conv = None, None
        for module in resnet.stem:
            if isinstance(module, nn.modules.conv._ConvNd):
                conv = module
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                if source is None:
                    _start(chain, module)
                else:
                    _link(chain, module, conv, source)
                source = LayerState(module)
    else:
        _start(chain, resnet.norm1)
        source = LayerState(resnet.norm1)
    for layer_name in resnet.res_layers:
        for block in getattr(resnet, layer_name):
            source = _wire_block(chain, block, source)
    return chain


# ------------------------------------------------------- necks and heads


def _rectifies(module: nn.Module) -> Optional[bool]:
    """True: ReLU after the norm; False: no activation; None: another
    activation (not modelled: no link)."""
    if not module.with_activation:
        return False
    return True if isinstance(module.activate, nn.ReLU) else None


def _consume(module: nn.Module, args) -> None:
    norm = module.norm
    norm.kn_link = None
    if not module.training or not args:
        return
    entry = module.kn_chain.producers.get(id(args[0]))
    if entry is not None and entry[0] is args[0]:
        norm.kn_link = Link(module.conv, FixedState(entry[1]), entry[2])


def _produce(module: nn.Module, args, output) -> None:
    rectify = _rectifies(module)
    state = module.norm.kn_state
    if module.training and state is not None and rectify is not None \
            and isinstance(output, Tensor):
        module.kn_chain.producers[id(output)] = (output, state, rectify)
    module.norm.kn_state = None


def _is_kn_conv_module(module: nn.Module) -> bool:
    return (getattr(module, 'with_norm', False)
            and isinstance(getattr(module, 'norm', None), KalmanNorm)
            and tuple(getattr(module, 'order', ())) ==
            ('conv', 'norm', 'act'))


def wire_kalman_chains(model: nn.Module) -> int:
    """Chain the KN layers of ``model``'s ConvModules by data flow (module
    docstring). KN backbones wired by :func:`wire_resnet` keep their own
    chain. Idempotent.

    Returns:
        The number of ConvModules wired (including earlier calls).
    """
    chain = _chain_of(model)
    wired = 0
    for module in model.modules():
        if not _is_kn_conv_module(module):
            continue
        wired += 1
        if getattr(module, 'kn_chain', None) is not None:
            continue
        module.kn_chain = chain
        module.norm.kn_wired = True
        module.norm.kn_keep_state = True
        chain.flow_layers.append(module.norm)
        module.register_forward_pre_hook(_consume)
        module.register_forward_hook(_produce)
    return wired
