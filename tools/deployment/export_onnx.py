"""Export an mmdet, mmseg or mmaction2 model with mmnorm layers to ONNX and
check the exported graph with onnxruntime against PyTorch.

Builds the model of CONFIG (``custom_imports`` and ``default_scope`` as in
``tools/train.py``), loads CHECKPOINT weights-only (nothing in it is
unpickled beyond tensors and mmengine's allow-listed metadata), switches it
to eval mode and exports the tensor forward of the network from the
preprocessed input (normalized and padded, as the data preprocessor would
hand it over, NCHW or NCTHW):

* ``--part model`` (default): as much of the model as plain tensors carry:
  mmdet single-stage detectors up to the head outputs, two-stage detectors
  up to the RPN head (RoI heads need RoIAlign and NMS: the mmdeploy route),
  mmseg segmentors up to the decode head's logits, mmaction2 recognizers
  up to the class scores;
* ``--part features``: backbone and neck only.

Then runs onnxruntime on a seeded sample input (and with ``--dynamic`` at
a second batch size and image size) and prints each output's max abs
error against PyTorch; exits with status 1 when one exceeds
``atol + rtol * max|PyTorch output|``, or when the graph holds an operator
outside the standard ONNX domain.

    python tools/deployment/export_onnx.py CONFIG CHECKPOINT \
        --out model.onnx [--shape H W] [--dynamic] [--part model|features] \
        [--exporter torchscript|dynamo] [--opset N] [--clip-len T] \
        [--atol 1e-4] [--rtol 1e-4] [--cfg-options k=v ...]
"""
from __future__ import annotations

import argparse
import os.path as osp
import sys
import warnings
from typing import Optional, Sequence

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402
from mmengine.registry import MODELS, DefaultScope  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import mmnorm  # noqa: E402,F401  (layers, checkpoint allow-list)
from mmnorm.compat.checkpoint import refuse_unsafe_checkpoints  # noqa: E402
from mmnorm.engine.toolkits import import_entry_point  # noqa: E402

PARTS = ('model', 'features')
EXPORTERS = ('torchscript', 'dynamo')


def _flatten(out) -> list[Tensor]:
    """Every tensor of a nested tuple/list/dict output, in order."""
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for item in out for t in _flatten(item)]


class TensorForward(nn.Module):
    """The tensor-only forward of a toolkit model, outputs flattened.

    Args:
        model: an mmdet detector, mmseg segmentor or mmaction2 recognizer.
        part: ``'model'`` or ``'features'`` (see the module docstring).
    """

    def __init__(self, model: nn.Module, part: str) -> None:
        super().__init__()
        if part not in PARTS:
            raise ValueError(f'export_onnx: part must be one of {PARTS}, '
                             f'got {part!r}')
        self.model = model
        self.part = part
        self.description = self._describe()

    def _describe(self) -> str:
        model = self.model
        names = ['backbone'] + (['neck'] if getattr(model, 'with_neck',
                                                    False) else [])
        if self.part == 'features':
            return ' + '.join(names)
        if hasattr(model, 'rpn_head') and hasattr(model, 'roi_head'):
            names.append('rpn_head (RoI heads need RoIAlign/NMS)')
        elif hasattr(model, 'bbox_head'):
            names.append('bbox_head')
        elif hasattr(model, 'decode_head'):
            names.append('decode_head')
        elif hasattr(model, 'cls_head'):
            names.append('cls_head')
        return ' + '.join(names)

    def _features(self, x: Tensor):
        model = self.model
        if hasattr(model, 'cls_head'):  # mmaction2: extract_feat reshapes
            feats = model.backbone(x)
            if getattr(model, 'with_neck', False):
                feats = model.neck(feats)
                if isinstance(feats, tuple) and len(feats) == 2 \
                        and not isinstance(feats[1], Tensor):
                    feats = feats[0]  # (features, loss_aux) of TPN
            return feats
        return model.extract_feat(x)

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        model = self.model
        feats = self._features(x)
        if self.part == 'features':
            return tuple(_flatten(feats))
        if hasattr(model, 'rpn_head') and hasattr(model, 'roi_head'):
            out = model.rpn_head(feats)
        elif hasattr(model, 'bbox_head'):
            out = model.bbox_head(feats)
        elif hasattr(model, 'decode_head'):
            out = model.decode_head(feats)
        elif hasattr(model, 'cls_head'):
            out = model.cls_head(feats)
        else:
            out = feats
        return tuple(_flatten(out))


def build_model(config: str, checkpoint: Optional[str],
                cfg_options: Optional[dict] = None) -> nn.Module:
    """The eval-mode model of ``config`` with ``checkpoint`` loaded
    weights-only (``None``: keep the initial weights)."""
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope')
    import_entry_point(scope)
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(cfg.model)
    if checkpoint is not None:
        with refuse_unsafe_checkpoints():
            load_checkpoint(model, checkpoint, map_location='cpu')
    return model.eval()


def _input_rank(model: nn.Module) -> int:
    """4 for image models, 5 for 3D video backbones (first conv's rank)."""
    for module in model.modules():
        if isinstance(module, nn.Conv3d):
            return 5
        if isinstance(module, nn.Conv2d):
            return 4
    return 4


def sample_input(model: nn.Module, batch: int, size: Sequence[int],
                 clip_len: int, seed: int = 0) -> Tensor:
    """A seeded standard-normal input (what a preprocessed image looks
    like after mean/std normalization)."""
    channels = 3
    preprocessor = getattr(model, 'data_preprocessor', None)
    mean = getattr(preprocessor, 'mean', None)
    if isinstance(mean, Tensor) and mean.numel() > 1:
        channels = mean.numel()
    shape = (batch, channels) + ((clip_len,) if _input_rank(model) == 5
                                 else ()) + tuple(size)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator)


def export(wrapper: TensorForward, x: Tensor, out: str, dynamic: bool,
           exporter: str, opset: Optional[int]) -> list[str]:
    """Export ``wrapper`` at ``x``; returns the output names."""
    with torch.no_grad():
        outputs = [f'output{i}' for i in range(len(wrapper(x)))]
    axes = [0] + list(range(2, x.dim()))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        if exporter == 'dynamo':
            shapes = None
            if dynamic:
                shapes = ({a: torch.export.Dim.DYNAMIC for a in axes},)
            torch.onnx.export(wrapper, (x,), out, input_names=['input'],
                              output_names=outputs, dynamo=True,
                              opset_version=opset or 18,
                              dynamic_shapes=shapes)
        else:
            dynamic_axes = None
            if dynamic:
                dynamic_axes = {'input': {a: f'input_{a}' for a in axes}}
                dynamic_axes.update({o: {0: 'input_0'} for o in outputs})
            torch.onnx.export(wrapper, (x,), out, input_names=['input'],
                              output_names=outputs, dynamo=False,
                              opset_version=opset or 11,
                              dynamic_axes=dynamic_axes)
    return outputs


def undo_initializer_sharing(path: str) -> int:
    """Give every ``Identity`` of an initializer its own initializer.

    The TorchScript exporter stores parameters with equal values once and
    feeds the other uses through ``Identity`` nodes (e.g. the weights of
    freshly initialized SN layers). onnxruntime 1.32's ``EliminateIdentity``
    rewrite then breaks some of these graphs at load time ("Node input ...
    is not a graph input, initializer, or output of a previous node"). A
    copy of the initializer under the ``Identity``'s output name is the
    same graph without the pattern. Rewrites ``path`` in place and returns
    the number of nodes replaced.
    """
    import onnx
    proto = onnx.load(path)
    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    keep, copies = [], []
    for node in graph.node:
        if node.op_type == 'Identity' and node.domain in ('', 'ai.onnx') \
                and node.input[0] in initializers \
                and node.output[0] not in outputs:
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            copies.append(copy)
            initializers[copy.name] = copy  # chains of Identity nodes
        else:
            keep.append(node)
    if copies:
        del graph.node[:]
        graph.node.extend(keep)
        graph.initializer.extend(copies)
        onnx.save(proto, path)
    return len(copies)


def foreign_ops(path: str) -> list[str]:
    """Operators outside the standard ONNX domains (e.g. ``mmnorm::``
    ops or a ``PythonOp``): onnxruntime and TensorRT cannot run them."""
    import onnx
    proto = onnx.load(path)
    local = {f.domain for f in proto.functions}
    nodes = list(proto.graph.node)
    for function in proto.functions:
        nodes += list(function.node)
    return sorted({f'{n.domain}::{n.op_type}' for n in nodes
                   if (n.domain not in ('', 'ai.onnx', *local))
                   or n.op_type == 'PythonOp'})


def compare(wrapper: TensorForward, path: str, x: Tensor, atol: float,
            rtol: float) -> list[tuple[str, tuple, float, float, bool]]:
    """Rows ``(output, shape, max abs error, tolerance, ok)`` of
    onnxruntime against PyTorch at input ``x``."""
    import onnxruntime
    session = onnxruntime.InferenceSession(
        path, providers=['CPUExecutionProvider'])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = [t.float().numpy() for t in wrapper(x)]
    if len(got) != len(expected):
        raise SystemExit(f'export_onnx: onnxruntime returned {len(got)} '
                         f'outputs, PyTorch {len(expected)}')
    rows = []
    for i, (g, e) in enumerate(zip(got, expected)):
        if g.shape != e.shape:
            rows.append((f'output{i}', e.shape, float('inf'), 0.0, False))
            continue
        err = float(np.abs(g - e).max()) if e.size else 0.0
        tol = atol + rtol * (float(np.abs(e).max()) if e.size else 0.0)
        ok = bool(np.isfinite(g).all()) and err <= tol
        rows.append((f'output{i}', e.shape, err, tol, ok))
    return rows


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint',
                        help="checkpoint file, or 'none' for the initial "
                        'weights (a smoke test of the export)')
    parser.add_argument('--out', required=True, help='the .onnx file')
    parser.add_argument('--shape', type=int, nargs=2, default=(320, 320),
                        metavar=('H', 'W'),
                        help='input height and width (default 320 320)')
    parser.add_argument('--clip-len', type=int, default=8,
                        help='frames per clip for 3D video models')
    parser.add_argument('--batch', type=int, default=1)
    parser.add_argument('--dynamic', action='store_true',
                        help='dynamic batch and spatial axes; also checks '
                        'a second batch size and image size')
    parser.add_argument('--part', choices=PARTS, default='model')
    parser.add_argument('--exporter', choices=EXPORTERS,
                        default='torchscript',
                        help="torchscript: torch.onnx.export(dynamo=False) "
                        "as mmdeploy; dynamo: torch.export based")
    parser.add_argument('--opset', type=int,
                        help='default 11 (torchscript) or 18 (dynamo)')
    parser.add_argument('--atol', type=float, default=1e-4)
    parser.add_argument('--rtol', type=float, default=1e-4)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)
    if min(args.shape) < 1 or args.batch < 1 or args.clip_len < 1:
        parser.error('--shape, --batch and --clip-len must be positive')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    checkpoint = None if args.checkpoint.lower() == 'none' \
        else args.checkpoint
    model = build_model(args.config, checkpoint, args.cfg_options)
    wrapper = TensorForward(model, args.part).eval()
    x = sample_input(model, args.batch, args.shape, args.clip_len)
    export(wrapper, x, args.out, args.dynamic, args.exporter, args.opset)
    print(f'exported {wrapper.description} of {osp.basename(args.config)} '
          f'({args.exporter}, input {tuple(x.shape)}'
          f'{", dynamic batch and spatial axes" if args.dynamic else ""}) '
          f'to {args.out}')
    undo_initializer_sharing(args.out)
    foreign = foreign_ops(args.out)
    if foreign:
        print(f'FAILED: the graph holds non-standard operators: {foreign}')
        return 1
    inputs = [x]
    if args.dynamic:
        h, w = args.shape
        inputs.append(sample_input(model, args.batch + 1, (h + 32, w + 64),
                                   args.clip_len, seed=1))
    ok = True
    print('| input | output | shape | max abs error | tolerance | ok |')
    print('|---|---|---|---|---|---|')
    for xi in inputs:
        for name, shape, err, tol, good in compare(wrapper, args.out, xi,
                                                   args.atol, args.rtol):
            ok &= good
            print(f'| {tuple(xi.shape)} | {name} | {tuple(shape)} '
                  f'| {err:.2e} | {tol:.2e} | {"yes" if good else "NO"} |')
    print('onnxruntime matches PyTorch' if ok else
          'FAILED: onnxruntime differs from PyTorch beyond the tolerance')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
