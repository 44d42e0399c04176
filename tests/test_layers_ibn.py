"""IBN against an independent computation."""
import pytest
import torch
from torch import nn

from mmnorm import IBN


def _instance_norm(x, weight, bias, eps=1e-5):
    """IN from the definition (biased variance, as nn.InstanceNorm)."""
    mean = x.mean((2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean((2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight.view(1, -1, 1, 1) \
        + bias.view(1, -1, 1, 1)


@pytest.mark.parametrize('ratio,in_first', [(0.5, True), (0.25, True),
                                            (0.7, False)])
def test_matches_definition_in_train_and_eval(ratio, in_first):
    c = 8
    layer = IBN(c, ratio=ratio, in_first=in_first).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(0.5, 1.5)
    k = int(c * ratio)
    x = torch.randn(3, c, 5, 6, dtype=torch.float64) * 2 + 1
    in_part = slice(0, k) if in_first else slice(c - k, c)
    bn_part = slice(k, c) if in_first else slice(0, c - k)
    bn = nn.BatchNorm2d(c - k).double()
    bn.load_state_dict(layer.BN.state_dict())
    for training in (True, False):
        layer.train(training)
        bn.train(training)
        y = layer(x)
        torch.testing.assert_close(
            y[:, in_part], _instance_norm(x[:, in_part], layer.IN.weight,
                                          layer.IN.bias))
        torch.testing.assert_close(y[:, bn_part], bn(x[:, bn_part]))
    # IN part per sample at test time: independent of the rest of the batch
    layer.eval()
    torch.testing.assert_close(layer(x[:1])[:, in_part],
                               layer(x)[:1, in_part])


def test_bn_part_is_a_real_batchnorm_and_keys_match_the_authors():
    layer = IBN(64)
    assert isinstance(layer.BN, nn.modules.batchnorm._BatchNorm)
    assert set(layer.state_dict()) == {
        'IN.weight', 'IN.bias', 'BN.weight', 'BN.bias', 'BN.running_mean',
        'BN.running_var', 'BN.num_batches_tracked'}
    assert layer.IN.num_features == 32 and layer.BN.num_features == 32


@pytest.mark.parametrize('kwargs,words', [
    (dict(ratio=1.0), 'ratio must be in'),
    (dict(ratio=0.01), 'at least one channel'),
    (dict(groups=2), 'unknown argument'),
])
def test_bad_options(kwargs, words):
    with pytest.raises((ValueError, TypeError), match=f'IBN: .*{words}'):
        IBN(16, **kwargs)


def test_built_by_mmcv_with_bn_abbreviation():
    from mmcv.cnn import build_norm_layer
    name, layer = build_norm_layer(dict(type='IBN', ratio=0.5), 64, 1)
    assert name == 'bn1' and isinstance(layer, IBN)
