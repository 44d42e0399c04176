"""Population statistics (the authors' batch-average mode) and its hook."""
import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from reference import reference_sn
from torch import nn
from torch.utils.data import DataLoader

from mmnorm import SwitchableNorm, recompute_population_stats


def _model():
    return nn.Sequential(nn.Conv2d(3, 6, 3), SwitchableNorm(
        6, using_moving_average=False), nn.BatchNorm2d(6), nn.Dropout(0.5))


def _expected(model, batches):
    means, variances = [], []
    for x in batches:
        with torch.no_grad():
            feats = model[0](x)
        _, m, v = reference_sn(feats.double(), model[1].mean_weight.double(),
                               model[1].var_weight.double(), None, None)
        means.append(m)
        variances.append(v)
    means, variances = torch.stack(means), torch.stack(variances)
    mean = means.mean(0)
    second = (variances + means ** 2).mean(0)  # the authors' formula
    return mean, second - mean ** 2


def test_recompute_matches_authors_formula_and_spares_other_modules():
    model = _model()
    batches = [torch.randn(4, 3, 9, 9) * 2 + 1 for _ in range(5)]
    bn_before = model[2].running_mean.clone()
    model.train()
    used = recompute_population_stats(model, batches, num_batches=3)
    assert used == 3
    mean, var = _expected(model, batches[:3])
    torch.testing.assert_close(model[1].running_mean.double(), mean,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var.double(), var,
                               rtol=1e-5, atol=1e-6)
    assert torch.equal(model[2].running_mean, bn_before)  # BN untouched
    assert model.training and model[1].training  # modes restored
    assert model[1]._population is None


def test_only_batch_average_skips_moving_average_layers():
    model = nn.ModuleList([SwitchableNorm(3), SwitchableNorm(
        3, using_moving_average=False)])
    recompute_population_stats(model, [torch.randn(2, 3, 4) + 5],
                               lambda m, x: [layer(x) for layer in m],
                               only_batch_average=True)
    assert torch.equal(model[0].running_mean, torch.zeros(3))
    assert model[1].running_mean.min() > 4


class ToyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.body = _model()
        self.head = nn.Linear(6, 2)

    def forward(self, inputs, labels=None, mode='tensor'):
        feats = self.body(inputs).mean((2, 3))
        if mode == 'tensor':
            return feats
        return dict(loss=nn.functional.cross_entropy(self.head(feats),
                                                     labels))


class CaptureCheckpoint(Hook):
    def __init__(self):
        self.saved = None

    def before_save_checkpoint(self, runner, checkpoint):
        self.saved = {k: v.clone() for k, v in
                      checkpoint['state_dict'].items()}


def test_hook_recomputes_before_the_checkpoint_is_written(tmp_path):
    torch.manual_seed(0)
    data = [dict(inputs=torch.randn(3, 9, 9) + 2, labels=i % 2)
            for i in range(12)]
    loader = DataLoader(data, batch_size=4, shuffle=False)
    capture = CaptureCheckpoint()
    runner = Runner(
        model=ToyModel(), work_dir=str(tmp_path), train_dataloader=loader,
        train_cfg=dict(by_epoch=True, max_epochs=1),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        custom_hooks=[dict(type='PopulationStatsHook', num_batches=2),
                      capture],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook',
                                           interval=1)),
        default_scope=None)
    runner.train()
    body = runner.model.body
    batches = [torch.stack([d['inputs'] for d in data[i:i + 4]])
               for i in (0, 4)]
    mean, var = _expected(body, batches)
    torch.testing.assert_close(body[1].running_mean.double(), mean,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(body[1].running_var.double(), var,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(capture.saved['body.1.running_mean'],
                               body[1].running_mean)


def test_void_batches_are_left_out_of_the_population():
    # SyncSN hands _track a batch with valid=False when every rank's batch
    # was empty (NaN statistics): the pooled statistics must skip it
    torch.manual_seed(0)
    model = _model()
    batches = [torch.randn(2, 3, 8, 8) + 1.5, torch.randn(3, 3, 8, 8)]
    void = object()

    def forward(m, batch):
        if batch is void:
            nan = torch.full((6,), float('nan'))
            m[1]._track(nan, nan, valid=torch.tensor(False))
        else:
            m(batch)

    used = recompute_population_stats(
        model, [void, batches[0], void, batches[1]], forward=forward)
    assert used == 4
    mean, var = _expected(model, batches)
    torch.testing.assert_close(model[1].running_mean, mean.float())
    torch.testing.assert_close(model[1].running_var, var.float())
    # only void batches: the buffers stay as they were
    before = model[1].running_mean.clone()
    recompute_population_stats(model, [void], forward=forward)
    assert torch.equal(model[1].running_mean, before)
