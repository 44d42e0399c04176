"""ONNX export of mmnorm layers and models, checked with onnxruntime.

Every round trip exports an eval-mode model at one input shape with dynamic
batch and spatial axes, checks the graph (standard operators only: no
``mmnorm::`` op, no ``PythonOp``; the dynamic axes are symbolic in the
graph's input), then runs onnxruntime at other shapes (another batch,
another H and W, batch 1, 1x1 maps) against PyTorch's eval output.
"""
from __future__ import annotations

import copy
import importlib.util
import os.path as osp
import textwrap
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from mmnorm.deploy import collapse_fixed_norms
from mmnorm.layers import (
    IBN,
    KalmanNorm,
    SparseSwitchableNorm,
    SwitchableNorm,
    SyncSwitchableNorm,
)
from mmnorm.layers.fixed import FixedSourceNorm
from mmnorm.ops.kalman import group_moments, kalman_combine, normalize
from mmnorm.ops.plain import (
    kalman_norm_plain,
    switchable_norm_plain,
    switchable_whitening_plain,
)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
ATOL = 1e-5
C = 6
SPATIAL = {2: (), 3: (7,), 4: (8, 10), 5: (3, 4, 5)}
#: shapes onnxruntime runs besides the export shape, by input rank
OTHER_SHAPES = {
    2: [(3,), (1,)],
    3: [(3, 5), (1, 7), (1, 1), (4, 1)],
    4: [(3, 5, 7), (1, 8, 10), (1, 1, 1), (4, 1, 1), (2, 1, 6)],
    5: [(1, 2, 3, 4), (3, 1, 1, 1)],
}


# ---------------------------------------------------------------- helpers

def _randomize(layer: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial lambdas, affine parameters and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(layer.named_parameters()) + [
                (n, b) for n, b in layer.named_buffers()
                if n.endswith(('running_mean', 'running_var'))]:
            noise = torch.randn(tensor.shape, generator=gen)
            if name.endswith('running_var'):
                tensor.copy_(noise.abs() * 0.8 + 0.3)
            elif name.endswith('weight') and tensor.dim() == 1 \
                    and 'mean_weight' not in name \
                    and 'var_weight' not in name:
                tensor.copy_(1 + 0.3 * noise)
            else:
                tensor.copy_(noise)
    return layer


class PlainNorm(nn.Module):
    """Runs an SN-family layer's eval math through
    :func:`switchable_norm_plain`, with the layer's own eval weights
    (computed once: in eval mode they depend on parameters only)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self._weights = {}
        with torch.no_grad():
            for flat in (False, True):
                if isinstance(layer, FixedSourceNorm):
                    mean_w, var_w = torch.zeros(3), torch.zeros(3)
                    mean_w[layer.mean_source] = 1.0
                    var_w[layer.var_source] = 1.0
                else:
                    mean_w, var_w = layer.mixing_weights(flat)
                self.register_buffer(f'mean_w{int(flat)}', mean_w.clone())
                self.register_buffer(f'var_w{int(flat)}', var_w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer, flat = self.layer, x.dim() == 2
        running = ((layer.running_mean, layer.running_var)
                   if layer.track_running_stats else (None, None))
        return switchable_norm_plain(
            x, layer.weight, layer.bias, getattr(self, f'mean_w{int(flat)}'),
            getattr(self, f'var_w{int(flat)}'), *running, layer.eps,
            flat)[0]


def _net(norm: nn.Module, rank: int, channels: int = C) -> nn.Module:
    """``op -> norm -> ReLU -> op`` for input of the given rank."""
    if rank == 2:
        first, last = nn.Linear(3, channels), nn.Linear(channels, 4)
    else:
        conv = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}[rank]
        first = conv(3, channels, 3, padding=1)
        last = conv(channels, 4, 1)
    return nn.Sequential(first, norm, nn.ReLU(), last).eval()


def _input(shape, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen) * 2 + 0.5


def _dynamic_axes(rank: int) -> list[int]:
    return [0] + list(range(2, rank))


def export(model: nn.Module, x: torch.Tensor, path: str, dynamo: bool,
           opset: int | None = None) -> onnx.ModelProto:
    """Export with dynamic batch and spatial axes; returns the model."""
    axes = _dynamic_axes(x.dim())
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if dynamo:
            dims = {a: torch.export.Dim(f'd{a}') for a in axes}
            torch.onnx.export(model, (x,), path, input_names=['x'],
                              dynamo=True, opset_version=opset or 18,
                              dynamic_shapes=(dims,), optimize=True)
        else:
            names = {a: f'd{a}' for a in axes}
            with torch.no_grad():
                out = model(x)
            outputs = ([f'y{i}' for i in range(len(out))]
                       if isinstance(out, (tuple, list)) else ['y'])
            torch.onnx.export(model, (x,), path, input_names=['x'],
                              output_names=outputs, dynamo=False,
                              opset_version=opset or 11,
                              dynamic_axes={'x': names, **{
                                  o: {0: 'd0'} for o in outputs}})
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    return proto


def check_graph(proto: onnx.ModelProto, rank: int) -> set[str]:
    """Standard ONNX operators only, and the dynamic axes symbolic."""
    nodes = list(proto.graph.node)
    for function in proto.functions:
        nodes += list(function.node)
    ops = {n.op_type for n in nodes}
    domains = {n.domain for n in nodes}
    assert 'PythonOp' not in ops, ops
    assert not any('mmnorm' in d for d in domains), domains
    assert domains <= {'', 'ai.onnx'} | {f.domain for f in proto.functions}
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    for axis in _dynamic_axes(rank):
        assert dims[axis].dim_param and not dims[axis].dim_value, \
            f'axis {axis} was fixed at export: {dims[axis]}'
    return ops


def run_ort(path: str, x: torch.Tensor) -> list[np.ndarray]:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        path, options, providers=['CPUExecutionProvider'])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def _flatten(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for item in out for t in _flatten(item)]


def round_trip(model: nn.Module, rank: int, path: str, dynamo: bool,
               channels: int = 3, reference: nn.Module | None = None,
               opset: int | None = None) -> set[str]:
    """Export ``model`` at one shape and compare onnxruntime with
    ``reference`` (default: the model) at every shape of the rank."""
    reference = reference or model
    batch = 2
    x = _input((batch, channels) + SPATIAL[rank])
    proto = export(model, x, path, dynamo, opset)
    ops = check_graph(proto, rank)
    shapes = [(batch,) + SPATIAL[rank]] + [
        (s[0],) + s[1:] for s in OTHER_SHAPES[rank]]
    for shape in shapes:
        xi = _input((shape[0], channels) + tuple(shape[1:]), seed=len(shape))
        with torch.no_grad():
            expected = _flatten(reference(xi))
        got = run_ort(path, xi)
        assert len(got) == len(expected)
        for e, g in zip(expected, got):
            assert g.shape == tuple(e.shape), (shape, g.shape, e.shape)
            assert np.isfinite(g).all(), shape
            err = float(np.abs(g - e.numpy()).max())
            assert err <= ATOL, f'input {shape}: max abs error {err:.2e}'
    return ops


def _ssn(mean_choice: int = -1, var_choice: int = -1) -> nn.Module:
    layer = _randomize(SparseSwitchableNorm(C))
    layer.set_radius(0.3)
    layer.mean_choice.fill_(mean_choice)
    layer.var_choice.fill_(var_choice)
    return layer


def _sw_layer():
    """The Switchable Whitening layer, once mmnorm/layers/sw.py exists."""
    try:
        module = importlib.import_module('mmnorm.layers.sw')
    except ImportError:
        pytest.skip('mmnorm.layers.sw (Switchable Whitening) does not '
                    'exist yet')
    from mmengine.registry import MODELS
    return _randomize(MODELS.build(dict(type='SW', num_features=16))), module


# --------------------------------------------------- the plain function

def _reference(x, weight, bias, mean_w, var_w, running, eps):
    """Float64 SN from its definition (per-slice unbiased IN variance,
    LN/BN as moments of all the elements they cover)."""
    x = x.double()
    n, c = x.shape[:2]
    flat = x.dim() == 2
    rows = x.reshape(n, c, -1)
    m = rows.shape[2]
    mean_in = rows.mean(2)
    var_in = (rows.var(2, unbiased=True) if m > 1
              else torch.zeros(n, c, dtype=x.dtype))
    # LN: every element of a sample; BN: every element of a channel.
    mean_ln = rows.reshape(n, -1).mean(1, keepdim=True)
    k_ln = c * m
    var_ln = rows.reshape(n, -1).var(1, unbiased=False, keepdim=True)
    if flat:
        var_ln = var_ln * k_ln / (k_ln - 1)
    else:  # IN variances are unbiased inside, biased between slices
        var_ln = (var_in.mean(1, keepdim=True)
                  + (mean_in - mean_ln).square().mean(1, keepdim=True))
    if running is None:
        mean_bn = mean_in.mean(0)
        var_bn = (var_in.mean(0) + (mean_in - mean_bn).square().mean(0))
        if flat:  # unbiased over the samples, 0 for a single one
            var_bn = (rows[..., 0].var(0) if n > 1
                      else torch.zeros(c, dtype=x.dtype))
    else:
        mean_bn, var_bn = (t.double() for t in running)
    mean_w, var_w = mean_w.double(), var_w.double()
    mean = mean_w[0] * mean_in + mean_w[1] * mean_ln + mean_w[2] * mean_bn
    var = var_w[0] * var_in + var_w[1] * var_ln + var_w[2] * var_bn
    y = (rows - mean[..., None]) / (var[..., None] + eps).sqrt()
    y = y * weight.double()[:, None] + bias.double()[:, None]
    return y.reshape(x.shape), mean_bn, var_bn


@pytest.mark.parametrize('shape', [
    (4, C), (1, C), (3, C, 5), (2, C, 4, 5), (1, C, 1, 1), (3, C, 1, 1),
    (2, C, 2, 3, 4), (1, C, 7, 1)])
@pytest.mark.parametrize('use_running', [False, True])
def test_plain_matches_definition(shape, use_running):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen) * 3 + 2
    weight = 1 + 0.3 * torch.randn(C, generator=gen)
    bias = torch.randn(C, generator=gen)
    flat = len(shape) == 2
    available = torch.tensor([not flat, True, True])
    mean_w = torch.randn(3, generator=gen).masked_fill(
        ~available, float('-inf')).softmax(0)
    var_w = torch.randn(3, generator=gen).masked_fill(
        ~available, float('-inf')).softmax(0)
    running = ((torch.randn(C, generator=gen),
                torch.rand(C, generator=gen) + 0.2) if use_running else None)
    args = (running or (None, None))
    y, batch_mean, batch_var = switchable_norm_plain(
        x, weight, bias, mean_w, var_w, *args, 1e-5, flat)
    y_ref, mean_ref, var_ref = _reference(x, weight, bias, mean_w, var_w,
                                          running, 1e-5)
    assert y.dtype == x.dtype and y.shape == x.shape
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), y_ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(batch_mean.double(), mean_ref, atol=1e-5,
                               rtol=1e-5)
    torch.testing.assert_close(batch_var.double(), var_ref, atol=1e-5,
                               rtol=1e-5)


@pytest.mark.parametrize('rank', [2, 3, 4, 5])
@pytest.mark.parametrize('train', [False, True])
def test_plain_matches_layer(rank, train):
    """Same output as the SN layer's own (kernel) path, both modes."""
    layer = _randomize(SwitchableNorm(C)).train(train)
    plain = PlainNorm(layer)
    for batch in (3, 1):
        x = _input((batch, C) + SPATIAL[rank])
        with torch.no_grad():
            expected = layer(x)
            flat = rank == 2
            mean_w, var_w = layer.mixing_weights(flat)
            running = ((None, None) if train else
                       (layer.running_mean, layer.running_var))
            got = switchable_norm_plain(x, layer.weight, layer.bias, mean_w,
                                        var_w, *running, layer.eps, flat)[0]
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)
    assert plain.mean_w0.shape == (3,)


def test_plain_constant_input_is_bias():
    x = torch.full((2, C, 3, 3), 7.0)
    w = torch.tensor([0.2, 0.3, 0.5])
    bias = torch.arange(C, dtype=torch.float32)
    y = switchable_norm_plain(x, torch.ones(C), bias, w, w, None, None,
                              1e-5, False)[0]
    torch.testing.assert_close(y, bias.view(1, C, 1, 1).expand_as(y))


def test_plain_half_input_keeps_dtype():
    x = _input((2, C, 4, 4))
    w = torch.tensor([0.2, 0.3, 0.5])
    y32 = switchable_norm_plain(x, None, None, w, w, None, None, 1e-5,
                                False)[0]
    y16 = switchable_norm_plain(x.half(), None, None, w, w, None, None,
                                1e-5, False)[0]
    assert y16.dtype == torch.float16
    torch.testing.assert_close(y16.float(), y32, atol=4e-3, rtol=2e-3)


@pytest.mark.parametrize('bad, message', [
    (dict(x=torch.zeros(2, C, 1, 1, 1, 1)), 'rank 2-5'),
    (dict(flat=True), 'flat must be True exactly'),
    (dict(mean_weight=torch.ones(2)), 'mean_weight must have shape'),
    (dict(running_var=None), 'both'),
])
def test_plain_bad_input(bad, message):
    args = dict(x=torch.zeros(2, C, 3, 3), weight=None, bias=None,
                mean_weight=torch.ones(3) / 3, var_weight=torch.ones(3) / 3,
                running_mean=torch.zeros(C), running_var=torch.ones(C),
                eps=1e-5, flat=False)
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        switchable_norm_plain(**args)


# ------------------------------------- the plain function through ONNX

@pytest.mark.parametrize('rank', [2, 3, 4, 5])
@pytest.mark.parametrize('opset', [11, 17])
def test_plain_sn_torchscript_exporter(rank, opset, tmp_path):
    layer = _randomize(SwitchableNorm(C)).eval()
    model = _net(PlainNorm(layer), rank)
    reference = nn.Sequential(model[0], layer, model[2], model[3]).eval()
    ops = round_trip(model, rank, str(tmp_path / 'sn.onnx'), dynamo=False,
                     reference=reference, opset=opset)
    assert 'ReduceMean' in ops


def _plain_layers() -> dict[str, nn.Module]:
    """Every SN-family layer kind, eval mode, through the wrapper."""
    collapsed = nn.Sequential(_ssn(0, 2), _ssn(1, 1), _ssn(2, 2))
    collapsed(_input((4, C, 5, 6)))  # a shape for the collapse check
    collapsed.eval()
    collapse_fixed_norms(collapsed)
    return {
        'SN': _randomize(SwitchableNorm(C)),
        'SN-no-bn': _randomize(SwitchableNorm(C, using_bn=False)),
        'SN-no-affine': _randomize(SwitchableNorm(C, affine=False)),
        'SSN-soft': _ssn(),
        'SSN-fixed-in-bn': _ssn(0, 2),
        'SSN-fixed-ln-in': _ssn(1, 0),
        'SyncSN': _randomize(SyncSwitchableNorm(C)),
        'collapsed-in-bn': collapsed[0],
        'collapsed-ln-ln': collapsed[1],
    }


@pytest.mark.parametrize('kind', sorted(_plain_layers()))
def test_plain_layers_torchscript_exporter(kind, tmp_path):
    layer = _plain_layers()[kind].eval()
    assert isinstance(layer, (SwitchableNorm, FixedSourceNorm))
    model = _net(PlainNorm(layer), 4)
    reference = nn.Sequential(model[0], layer, model[2], model[3]).eval()
    round_trip(model, 4, str(tmp_path / 'm.onnx'), dynamo=False,
               reference=reference)


class _Zoo(nn.Module):
    """One network through every layer kind (one dynamo export for all:
    each export costs seconds)."""

    def __init__(self, norms: list[nn.Module]) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, C, 3, padding=1)
        self.norms = nn.ModuleList(norms)
        self.convs = nn.ModuleList(nn.Conv2d(C, C, 3, padding=1)
                                   for _ in norms)

    def forward(self, x):
        x = self.stem(x)
        for norm, conv in zip(self.norms, self.convs):
            x = conv(torch.relu(norm(x)))
        return x


#: a dynamo export costs seconds per layer here: one network with the
#: distinct paths (running statistics, batch statistics, one-hot weights)
DYNAMO_KINDS = ('SN', 'SN-no-bn', 'SSN-fixed-in-bn')


def test_plain_layers_dynamo_exporter(tmp_path):
    layers = _plain_layers()
    model = _Zoo([PlainNorm(layers[k].eval()) for k in DYNAMO_KINDS])
    reference = _Zoo([layers[k] for k in DYNAMO_KINDS])
    reference.stem, reference.convs = model.stem, model.convs
    ops = round_trip(model.eval(), 4, str(tmp_path / 'zoo.onnx'),
                     dynamo=True, reference=reference.eval())
    assert 'ReduceMean' in ops


# --------------------------------------- layers that export on their own

def _ibn() -> IBN:
    layer = IBN(C, ratio=0.5)
    _randomize(layer.BN)
    with torch.no_grad():
        layer.IN.weight.uniform_(0.5, 1.5)
        layer.IN.bias.normal_()
    return layer.eval()


@pytest.mark.parametrize('dynamo', [False, True])
def test_ibn_round_trip_and_1x1_maps(dynamo, tmp_path):
    """IBN exports as InstanceNormalization + BatchNormalization. PyTorch's
    InstanceNorm refuses 1x1 input; the exported graph gives the IN
    channels their bias there (the centred value is 0, as in SN's IN
    branch), the BN channels BN's output."""
    ibn = _ibn()
    path = str(tmp_path / 'ibn.onnx')
    x = _input((2, C, 8, 10))
    proto = export(ibn, x, path, dynamo)
    ops = check_graph(proto, 4)
    assert 'InstanceNormalization' in ops
    for shape in [(2, C, 8, 10), (3, C, 5, 7), (1, C, 8, 10), (1, C, 2, 1)]:
        xi = _input(shape)
        with torch.no_grad():
            expected = ibn(xi).numpy()
        got = run_ort(path, xi)[0]
        assert float(np.abs(got - expected).max()) <= ATOL, shape
    with pytest.raises(ValueError):  # PyTorch itself: no 1x1 IN
        ibn(_input((1, C, 1, 1)))
    k = ibn.in_channels
    for batch in (1, 3):
        xi = _input((batch, C, 1, 1))
        got = run_ort(path, xi)[0]
        expected_in = ibn.IN.bias.detach().view(1, k, 1, 1).expand(
            batch, k, 1, 1)
        with torch.no_grad():
            expected_bn = ibn.BN(xi[:, k:])
        # onnxruntime's x - mean is a rounding error of x here, which
        # 1 / sqrt(eps) amplifies: about one float32 ulp of |x| * 316.
        ulp = float(xi[:, :k].abs().max()) * 2.0 ** -23
        gain = float(ibn.IN.weight.detach().max())
        in_tol = 4 * ulp / ibn.IN.eps ** 0.5 * gain
        assert float(np.abs(got[:, :k] - expected_in.numpy()).max()) \
            <= max(in_tol, ATOL)
        assert float(np.abs(got[:, k:] - expected_bn.numpy()).max()) <= ATOL


def test_kn_round_trip(tmp_path):
    """Eval-mode KN is BN with the running combined statistics: the
    exporters take it as BatchNormalization (folded into the conv; the
    dynamo exporter's case is in test_layers_dynamo_exporter)."""
    kn = _randomize(KalmanNorm(C)).eval()
    round_trip(_net(kn, 4), 4, str(tmp_path / 'kn_ts.onnx'), dynamo=False)


class PlainKN(nn.Module):
    """A KN layer's batch-statistics math through :func:`kalman_norm_plain`
    (``track_running_stats=False``), optionally with a fixed prediction."""

    def __init__(self, layer: KalmanNorm, prediction=None) -> None:
        super().__init__()
        self.layer, self.prediction = layer, prediction

    def forward(self, x):
        layer = self.layer
        return kalman_norm_plain(x, layer.weight, layer.bias, layer.eps,
                                 layer.group_size, self.prediction,
                                 layer.prior_weight)


@pytest.mark.parametrize('group_size', [None, 2])
@pytest.mark.parametrize('rank', [2, 4, 5])
def test_kn_plain_matches_layer(group_size, rank):
    """Batch-statistics KN (no running statistics, so also in eval mode)
    from plain ops equals the layer; with a prediction, the Kalman
    combination of :mod:`mmnorm.ops.kalman`."""
    layer = _randomize(KalmanNorm(C, track_running_stats=False,
                                  group_size=group_size)).eval()
    x = _input((4, C) + SPATIAL[rank])
    with torch.no_grad():
        torch.testing.assert_close(PlainKN(layer)(x), layer(x), atol=2e-6,
                                   rtol=1e-5)
        groups = 4 // (group_size or 4)
        gen = torch.Generator().manual_seed(5)
        prediction = (torch.randn(groups, C, generator=gen),
                      torch.rand(groups, C, generator=gen) + 0.5)
        mean, var = kalman_combine(*group_moments(x, group_size or 4),
                                   *prediction, layer.prior_weight)
        expected = normalize(x, mean, var, layer.eps, layer.weight,
                             layer.bias)
        got = PlainKN(layer, prediction)(x)
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)


def test_kn_batch_statistics_round_trip(tmp_path):
    """``F.batch_norm(training=True)`` does not export with a dynamic
    batch (TorchScript exporter: 'batch_size and channel_size must be
    non-None'); the plain function does, grouped too."""
    layer = _randomize(KalmanNorm(C, track_running_stats=False,
                                  group_size=2)).eval()
    model = _net(PlainKN(layer), 4)
    reference = nn.Sequential(model[0], layer, model[2], model[3]).eval()
    path = str(tmp_path / 'kn.onnx')
    check_graph(export(model, _input((4, 3, 8, 10)), path, False), 4)
    for shape in [(4, 3, 8, 10), (2, 3, 5, 7), (6, 3, 1, 1)]:
        xi = _input(shape)
        with torch.no_grad():
            expected = reference(xi).numpy()
        err = float(np.abs(run_ort(path, xi)[0] - expected).max())
        assert err <= ATOL, (shape, err)


# ---------------- real layers (mmnorm.ops.dispatch: the plain path)

def _real_layers() -> dict[str, nn.Module]:
    layers = _plain_layers()
    layers['KN'] = _randomize(KalmanNorm(C))
    return layers


@pytest.mark.parametrize('kind', sorted(_real_layers()))
@pytest.mark.parametrize('rank', [2, 4, 5])
def test_layer_torchscript_exporter(kind, rank, tmp_path):
    layer = _real_layers()[kind].eval()
    if rank == 2 and kind.startswith(('SSN-fixed', 'collapsed-in')):
        pytest.skip('an IN source has no (N, C) statistics')
    ops = round_trip(_net(layer, rank), rank, str(tmp_path / 'm.onnx'),
                     dynamo=False)
    assert 'PythonOp' not in ops


@pytest.mark.parametrize('kind', ['SN', 'SSN-soft', 'SSN-fixed-in-bn'])
def test_export_after_eager_forward(kind, tmp_path):
    """A user runs the eval model (grad enabled) and then exports it."""
    layer = _real_layers()[kind].eval()
    model = _net(layer, 4)
    model(_input((2, 3, 8, 10)))
    round_trip(model, 4, str(tmp_path / 'm.onnx'), dynamo=False)


@pytest.mark.parametrize('kinds', [
    ('SN', 'collapsed-ln-ln', 'KN'),
    # SparsestMax's branch-free iterations make SSN graphs large: a
    # dynamo export of every kind takes about two minutes here
    pytest.param(tuple(sorted(_real_layers())), marks=pytest.mark.slow,
                 id='every-kind')])
def test_layers_dynamo_exporter(kinds, tmp_path):
    layers = _real_layers()
    model = _Zoo([layers[k].eval() for k in kinds]).eval()
    round_trip(model, 4, str(tmp_path / 'zoo.onnx'), dynamo=True)


def test_sw_plain_passes_torchscript_exporter(monkeypatch, tmp_path):
    """The SW layer with its passes from switchable_whitening_plain (what
    sw.py should call under export) exports with the TorchScript exporter
    and equals the layer's own eval output."""
    layer, module = _sw_layer()
    layer.eval()
    reference = _net(layer, 4, channels=16)
    plain = copy.deepcopy(reference)
    x = _input((2, 16, 5, 6))
    with torch.no_grad():
        expected = layer(x)
        monkeypatch.setattr(module, 'switchable_whitening',
                            switchable_whitening_plain)
        torch.testing.assert_close(layer(x), expected, atol=2e-6,
                                   rtol=1e-5)
    # opset 13: Newton's iteration takes traces with aten::diagonal
    ops = round_trip(plain, 4, str(tmp_path / 'sw.onnx'), dynamo=False,
                     reference=_UnpatchedSW(reference, module, monkeypatch),
                     opset=13)
    assert 'MatMul' in ops


class _UnpatchedSW(nn.Module):
    """Runs ``net`` with sw.py's own passes (the reference)."""

    def __init__(self, net, module, monkeypatch) -> None:
        super().__init__()
        self.net, self.module, self.patch = net, module, monkeypatch
        from mmnorm.ops import whitening
        self.original = whitening.switchable_whitening

    def forward(self, x):
        patched = self.module.switchable_whitening
        self.module.switchable_whitening = self.original
        try:
            return self.net(x)
        finally:
            self.module.switchable_whitening = patched


@pytest.mark.parametrize('dynamo', [False, True])
def test_sw_round_trip(dynamo, tmp_path):
    layer, _ = _sw_layer()
    round_trip(_net(layer.eval(), 4, channels=16), 4,
               str(tmp_path / 'sw.onnx'), dynamo=dynamo)


# ------------------------------------------- toolkit models and the tool

def _randomize_all(model: nn.Module) -> nn.Module:
    """Every mmnorm / BN layer of a built model gets non-trivial state."""
    for i, module in enumerate(model.modules()):
        if isinstance(module, (SwitchableNorm, nn.modules.batchnorm._BatchNorm,
                               KalmanNorm)):
            _randomize(module, seed=i)
    return model


def _resnet_fpn(depth: int, base: int, norm: dict) -> nn.Module:
    pytest.importorskip('mmcv.ops')
    from toolkit_models import build_in_scope
    neck_channels = 32
    stage = [base * 4 * 2 ** i for i in range(4)] if depth >= 50 else \
        [base * 2 ** i for i in range(4)]
    backbone = build_in_scope('mmdet', dict(
        type='ResNet', depth=depth, base_channels=base, norm_cfg=norm,
        norm_eval=False, out_indices=(0, 1, 2, 3)))
    neck = build_in_scope('mmdet', dict(
        type='FPN', in_channels=stage, out_channels=neck_channels,
        num_outs=5, norm_cfg=norm))
    return _randomize_all(_BackboneNeck(backbone, neck)).eval()


class _BackboneNeck(nn.Module):
    def __init__(self, backbone, neck) -> None:
        super().__init__()
        self.backbone, self.neck = backbone, neck

    def forward(self, x):
        return tuple(self.neck(self.backbone(x)))


def _check_feature_round_trip(model, path, shapes, dynamo=False):
    x = torch.randn((1, 3) + shapes[0])
    check_graph(export(model, x, path, dynamo), 4)
    for i, size in enumerate(shapes):
        xi = torch.randn((1 + i % 2, 3) + size)
        with torch.no_grad():
            expected = model(xi)
        got = run_ort(path, xi)
        assert len(got) == len(expected) == 5
        for e, g in zip(expected, got):
            scale = float(e.abs().max())
            err = float(np.abs(g - e.numpy()).max())
            # deep float32 stacks: 1e-5 relative to the output's scale
            assert err <= ATOL * max(1.0, scale), (size, err, scale)


def test_mmdet_resnet18_fpn_sn_round_trip(tmp_path):
    """A small ResNet-18-style backbone + FPN, SN everywhere (fast)."""
    model = _resnet_fpn(18, 16, dict(type='SN'))
    _check_feature_round_trip(model, str(tmp_path / 'r18.onnx'),
                              [(96, 128), (64, 96)])


@pytest.mark.slow  # about a minute on 2 busy cores
def test_mmdet_resnet50_fpn_sn_round_trip(tmp_path):
    """mmdet's ResNet-50 + FPN with SN in both, exported at 128x160 with
    dynamic axes and run by onnxruntime at another batch and size."""
    model = _resnet_fpn(50, 64, dict(type='SN'))
    _check_feature_round_trip(model, str(tmp_path / 'r50.onnx'),
                              [(128, 160), (96, 192)])


def _tool_module():
    spec = importlib.util.spec_from_file_location(
        'export_onnx', osp.join(REPO, 'tools', 'deployment', 'export_onnx.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_equal_parameters_load_in_onnxruntime(tmp_path):
    """Freshly initialized SN layers have equal weights, which the
    TorchScript exporter shares through Identity nodes that onnxruntime's
    EliminateIdentity rewrite can break; the tool gives each use its own
    initializer, and the graph then loads and matches."""
    tool = _tool_module()
    layers = []
    for i in range(3):
        layers += [nn.Conv2d(3 if i == 0 else C, C, 3, padding=1),
                   SwitchableNorm(C)]
    model = nn.Sequential(*layers).eval()
    path = str(tmp_path / 'fresh.onnx')
    x = _input((1, 3, 8, 8))
    export(model, x, path, dynamo=False)
    assert tool.undo_initializer_sharing(path) > 0
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert 'Identity' not in {n.op_type for n in proto.graph.node}
    with torch.no_grad():
        expected = model(x).numpy()
    assert float(np.abs(run_ort(path, x)[0] - expected).max()) <= ATOL


_TOOL_CONFIG = """
default_scope = 'mmdet'
custom_imports = dict(imports=['mmnorm'], allow_failed_imports=False)
sn = dict(type='SN')
model = dict(
    type='RetinaNet',
    data_preprocessor=dict(type='DetDataPreprocessor',
                           mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                           pad_size_divisor=32),
    backbone=dict(type='ResNet', depth=18, base_channels=16,
                  norm_cfg=sn, norm_eval=False, out_indices=(1, 2, 3)),
    neck=dict(type='FPN', in_channels=[32, 64, 128], out_channels=32,
              start_level=0, add_extra_convs='on_input', num_outs=5,
              norm_cfg=sn),
    bbox_head=dict(
        type='RetinaHead', num_classes=3, in_channels=32, feat_channels=32,
        stacked_convs=1, norm_cfg=sn,
        anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                              scales_per_octave=3, ratios=[0.5, 1.0, 2.0],
                              strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder',
                        target_means=[0.0, 0.0, 0.0, 0.0],
                        target_stds=[1.0, 1.0, 1.0, 1.0]),
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0,
                      alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=1.0)),
    test_cfg=dict(nms_pre=100, min_bbox_size=0, score_thr=0.05,
                  nms=dict(type='nms', iou_threshold=0.5),
                  max_per_img=10))
"""


def test_export_tool_end_to_end(tmp_path, capsys):
    """export_onnx.py on a small RetinaNet config with SN everywhere: a
    checkpoint saved from the model (weights-only safe), the whole tensor
    forward (backbone, neck, head), dynamic axes checked at a second
    shape; and a tampered checkpoint is refused."""
    pytest.importorskip('mmcv.ops')
    from mmengine.config import Config
    from toolkit_models import build_in_scope
    config = tmp_path / 'retinanet_r18-sn.py'
    config.write_text(textwrap.dedent(_TOOL_CONFIG))
    model = _randomize_all(build_in_scope(
        'mmdet', Config.fromfile(str(config)).model)).eval()
    checkpoint = tmp_path / 'model.pth'
    torch.save({'state_dict': model.state_dict(),
                'meta': {'epoch': 1}}, str(checkpoint))
    out = tmp_path / 'model.onnx'
    tool = _tool_module()
    status = tool.main([str(config), str(checkpoint), '--out', str(out),
                        '--shape', '96', '128', '--dynamic'])
    printed = capsys.readouterr()
    assert status == 0, printed.out + printed.err
    assert 'backbone + neck + bbox_head' in printed.out
    rows = [line for line in printed.out.splitlines()
            if line.startswith('| (')]
    # 5 levels x (scores, boxes) at each of the two input shapes
    assert len(rows) == 20 and all(r.endswith('| yes |') for r in rows)
    assert any(r.startswith('| (2, 3, 128, 192)') for r in rows)
    proto = onnx.load(str(out))
    check_graph(proto, 4)
    # the exported weights are the checkpoint's: onnxruntime reproduces
    # the model built here with that state
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected = model.bbox_head(model.extract_feat(x))[0][0]
    got = run_ort(str(out), x)[0]
    assert float(np.abs(got - expected.numpy()).max()) <= 1e-4

    class Evil:
        def __reduce__(self):
            return (print, ('unpickled!',))
    torch.save({'state_dict': model.state_dict(), 'x': Evil()},
               str(tmp_path / 'evil.pth'))
    with pytest.raises(SystemExit) as exit_info:
        tool.main([str(config), str(tmp_path / 'evil.pth'), '--out',
                   str(tmp_path / 'evil.onnx')])
    printed = capsys.readouterr()
    assert exit_info.value.code == 1
    assert 'refused to load a checkpoint' in printed.err
    assert 'unpickled!' not in printed.out
    assert not (tmp_path / 'evil.onnx').exists()
