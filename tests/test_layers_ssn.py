"""Sparse SN: SN statistics with SparsestMax weights that freeze."""
import os

import pytest
import torch
from dist_utils import init_group
from reference import reference_sn
from torch import nn

from mmnorm import SparseSwitchableNorm
from mmnorm.ops.sparsestmax import sparsestmax


def _layer(c=5, radius=0.3):
    layer = SparseSwitchableNorm(c).double()
    with torch.no_grad():
        layer.mean_weight.copy_(torch.tensor([1.2, 1.0, 0.9]))
        layer.var_weight.copy_(torch.tensor([0.2, 0.9, 0.3]))
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    layer.set_radius(radius)
    return layer


@pytest.mark.parametrize('shape', [(4, 5, 3, 3), (6, 5), (2, 5, 7)])
def test_matches_reference_with_sparsestmax_weights(shape):
    layer = _layer()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    flat = len(shape) == 2
    index = torch.tensor([1, 2] if flat else [0, 1, 2])

    def weights(logits):
        w = torch.zeros(3, dtype=torch.float64)
        w[index] = sparsestmax(logits[index], 0.3)
        return w

    ref = reference_sn(x, layer.mean_weight, layer.var_weight, layer.weight,
                       layer.bias, mixing=(weights(layer.mean_weight),
                                           weights(layer.var_weight)))[0]
    torch.testing.assert_close(layer(x), ref)
    if flat:
        assert layer.ratios()['mean']['in'] == 0


def test_gradcheck_before_freezing():
    layer = _layer()
    x = torch.randn(3, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, *p: layer(x),
        (x, layer.mean_weight, layer.var_weight, layer.weight, layer.bias))
    assert not layer.mean_fixed


def test_freezes_when_one_hot_and_stays_exactly_constant():
    layer = _layer(radius=0.9)
    opt = torch.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9,
                          weight_decay=0.1)
    x = torch.randn(4, 5, 3, 3, dtype=torch.float64)
    target = torch.randn_like(x)
    # a few steps before the radius is large: momentum builds up
    layer.set_radius(0.0)
    for _ in range(3):
        opt.zero_grad()
        (layer(x) * target).sum().backward()
        opt.step()
    layer.set_radius(0.9)
    layer(x)
    assert layer.fixed
    frozen = [w.clone() for w in layer.mixing_weights()]
    assert all(int((w > 0).sum()) == 1 for w in frozen)
    for _ in range(5):
        opt.zero_grad()
        (layer(x) * target).sum().backward()
        assert layer.mean_weight.grad.abs().sum() == 0
        opt.step()
        for before, now in zip(frozen, layer.mixing_weights()):
            assert torch.equal(before, now)
    # eval and a smaller radius do not unfreeze
    layer.set_radius(0.0)
    layer.eval()
    layer(x)
    assert layer.fixed


def test_state_dict_keeps_the_authors_layout_and_restores_the_freeze():
    layer = _layer(radius=0.95)
    layer(torch.randn(4, 5, 3, 3, dtype=torch.float64))
    state = layer.state_dict()
    assert {'radius', 'mean_choice', 'var_choice'} <= set(state)
    assert sorted(state['mean_weight'].tolist()) == [0.0, 0.0, 1.0]
    clone = SparseSwitchableNorm(5).double()
    clone.load_state_dict(state)
    assert clone.fixed and float(clone.radius) == pytest.approx(0.95)
    for a, b in zip(clone.mixing_weights(), layer.mixing_weights()):
        assert torch.equal(a, b)


def test_registered_as_ssn():
    from mmcv.cnn import build_norm_layer
    name, layer = build_norm_layer(dict(type='SSN'), 8, postfix=2)
    assert isinstance(layer, SparseSwitchableNorm) and name == 'bn2'


def _ddp_worker(rank, world_size, out_dir):
    import torch.distributed as dist
    init_group(rank, world_size, out_dir)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), SparseSwitchableNorm(4))
    with torch.no_grad():
        model[1].mean_weight.copy_(torch.tensor([1.2, 1.0, 0.9]))
    ddp = nn.parallel.DistributedDataParallel(
        model, find_unused_parameters=False, broadcast_buffers=False)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.5, momentum=0.9,
                          weight_decay=0.1)
    torch.manual_seed(rank)
    history = []
    for step in range(6):
        model[1].set_radius(0.0 if step < 2 else 0.95)
        opt.zero_grad()
        ddp(torch.randn(2, 3, 6, 6)).pow(2).mean().backward()
        opt.step()
        history.append(torch.stack(model[1].mixing_weights()))
    torch.save(dict(history=history, choice=int(model[1].mean_choice)),
               os.path.join(out_dir, f'rank{rank}.pt'))
    dist.destroy_process_group()


def test_freeze_under_two_process_ddp(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f'rank{r}.pt', weights_only=True)
               for r in range(2)]
    for result in results:
        history = result['history']
        assert result['choice'] >= 0
        # frozen from step 2 on: exactly constant afterwards
        for later in history[3:]:
            assert torch.equal(later, history[2])
    assert torch.equal(results[0]['history'][-1], results[1]['history'][-1])


@pytest.mark.parametrize('mean_choice,var_choice', [(0, 0), (1, 1), (2, 2),
                                                    (0, 2), (1, 0)])
def test_fixed_layer_uses_only_its_statistics_and_matches_sn(mean_choice,
                                                             var_choice):
    from mmnorm import SwitchableNorm
    ssn = _layer()
    mix_learning = ssn._mix(False)
    ssn.mean_choice.fill_(mean_choice)
    ssn.var_choice.fill_(var_choice)
    # freezing is device state only: the host-side mix stays the same
    assert type(ssn._mix(False)) is type(mix_learning)
    sn = SwitchableNorm(5).double()
    sn.load_state_dict({k: v for k, v in ssn.state_dict().items()
                        if k in sn.state_dict()})
    with torch.no_grad():  # softmax of these logits is one-hot in float64
        sn.mean_weight.copy_(torch.full((3,), -1e4))
        sn.mean_weight[mean_choice] = 0
        sn.var_weight.copy_(torch.full((3,), -1e4))
        sn.var_weight[var_choice] = 0
    running = ssn.running_var.clone()
    for training in (True, False):
        ssn.train(training)
        sn.train(training)
        x = torch.randn(4, 5, 3, 3, dtype=torch.float64, requires_grad=True)
        x2 = x.detach().clone().requires_grad_()
        y, y2 = ssn(x), sn(x2)
        torch.testing.assert_close(y, y2)
        g = torch.randn_like(y)
        y.backward(g)
        y2.backward(g)
        torch.testing.assert_close(x.grad, x2.grad)
    if 2 in (mean_choice, var_choice):
        torch.testing.assert_close(ssn.running_var, sn.running_var)
    else:  # BN statistics are no longer computed nor tracked
        torch.testing.assert_close(ssn.running_var, running)


def test_freezing_neither_breaks_the_graph_nor_recompiles():
    """The freeze state is device data: one full graph serves the learning
    layer, the step that freezes it and the frozen layer."""
    from torch._dynamo.testing import CompileCounter
    layer = _layer(radius=0.0).float()
    counter = CompileCounter()
    compiled = torch.compile(layer, backend=counter, fullgraph=True)
    x = torch.randn(2, 5, 4, 4, requires_grad=True)
    for radius in (0.0, 0.3, 0.95, 0.95):
        layer.set_radius(radius)
        compiled(x).sum().backward()
    assert layer.fixed
    assert counter.frame_count == 1
    eager = SparseSwitchableNorm(5)
    eager.load_state_dict(layer.state_dict())
    torch.testing.assert_close(compiled(x), eager(x))


def test_a_layer_known_frozen_skips_sparsestmax_with_the_same_result():
    """Eager mode: once the host has seen (asynchronously) that both
    choices are set, the weights come without SparsestMax; the same values
    and exactly-zero lambda gradients, far fewer ops."""
    import copy

    from test_host_syncs import HostReads
    layer = _layer(radius=0.95)
    x = torch.randn(4, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    layer(x)  # freezes
    assert layer.fixed
    slow = [w.clone() for w in layer.mixing_weights()]
    assert not layer._host_frozen
    layer(x)  # reads the probe taken before freezing: not yet frozen
    assert not layer._host_frozen
    layer(x)  # reads the probe of the step after freezing
    assert layer._host_frozen
    fast = layer.mixing_weights()
    for a, b in zip(fast, slow):
        assert torch.equal(a, b)

    class Count(HostReads):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.calls.append(str(func))
            return func(*args, **(kwargs or {}))

    # a whole frozen training step: the op gets the choices and the raw
    # lambdas (no SparsestMax, no one-hot built in Python); the lambdas'
    # gradient is exactly 0 even for a non-finite output gradient
    with Count() as mode:
        layer(x).backward(torch.full_like(x, float('inf')))
    assert len(mode.calls) < 40, mode.calls
    assert not any('sort' in call for call in mode.calls)
    assert layer.mean_weight.grad.eq(0).all()
    assert layer.var_weight.grad.eq(0).all()
    # deepcopy (EMA models) and loading a learning state reset it
    clone = copy.deepcopy(layer)
    assert clone._host_probe is None and clone.fixed
    learning = _layer()
    layer.load_state_dict(learning.state_dict())
    assert not layer._host_frozen and not layer.fixed
    for a, b in zip(layer.mixing_weights(), learning.mixing_weights()):
        assert torch.equal(a, b)
