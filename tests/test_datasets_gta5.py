"""GTA5Dataset (label ids -> Cityscapes train ids through mmseg's pipeline)
and the seeded GTA5 split tool."""
import importlib.util
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLIT_TOOL = os.path.join(ROOT, 'tools', 'dataset_converters',
                          'gta5_split.py')
SHIPPED_SPLITS = os.path.join(ROOT, 'configs', 'gta5_cityscapes', 'splits')
GTA5_CONFIG = os.path.join(
    ROOT, 'configs', 'gta5_cityscapes',
    'fcn_r50b-d8_8xb2-40k_gta5-512x1024_cityscapes.py')

#: Cityscapes' label id -> train id table, written out independently of
#: mmnorm's (cityscapesscripts' labels.py, trainId column)
EXPECTED_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7,
                      21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14,
                      28: 15, 31: 16, 32: 17, 33: 18}
HEIGHT, WIDTH = 12, 16


def _load_tool():
    spec = importlib.util.spec_from_file_location('gta5_split', SPLIT_TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _expected(ids: np.ndarray) -> np.ndarray:
    out = np.full(ids.shape, 255, np.uint8)
    for label_id, train_id in EXPECTED_TRAIN_IDS.items():
        out[ids == label_id] = train_id
    return out


def _label_ids(index: int) -> np.ndarray:
    """Every id 0-33 on each image, plus ids GTA5 should not have (34, 200,
    255), in an order that changes with ``index``."""
    values = np.concatenate([np.arange(34), [34, 200, 255]])
    flat = np.resize(np.roll(values, 5 * index), HEIGHT * WIDTH)
    return flat.reshape(HEIGHT, WIDTH).astype(np.uint8)


def _fake_gta5(root, count: int = 4, palette: bool = True) -> list[str]:
    """GTA5 layout: ``images/NNNNN.png`` and palette ``labels/NNNNN.png``
    whose indices are label ids (as the real labels are stored)."""
    from PIL import Image
    os.makedirs(os.path.join(root, 'images'))
    os.makedirs(os.path.join(root, 'labels'))
    rng = np.random.default_rng(0)
    names = []
    for index in range(1, count + 1):
        name = f'{index:05d}'
        image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        Image.fromarray(image).save(os.path.join(root, 'images',
                                                 name + '.png'))
        label = Image.fromarray(_label_ids(index), mode='L')
        if palette:
            label = label.convert('P')  # indices = the grey values
            label.putpalette(list(rng.integers(0, 256, 768, dtype=np.uint8)))
        label.save(os.path.join(root, 'labels', name + '.png'))
        names.append(name)
    return names


def _build(**kwargs):
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS

    import mmnorm.mmseg  # noqa: F401  (registers GTA5Dataset)
    pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                dict(type='PackSegInputs')]
    with DefaultScope.overwrite_default_scope('mmseg'):
        return DATASETS.build(dict(type='GTA5Dataset', pipeline=pipeline,
                                   **kwargs))


def _gt(sample) -> np.ndarray:
    return sample['data_samples'].gt_sem_seg.data.squeeze(0).numpy()


def test_table_matches_cityscapes():
    from mmnorm.datasets import LABEL_ID_TO_TRAIN_ID
    assert LABEL_ID_TO_TRAIN_ID == EXPECTED_TRAIN_IDS


@pytest.mark.parametrize('palette', [True, False], ids=['palette', 'grey'])
def test_pipeline_gives_train_ids(tmp_path, palette):
    names = _fake_gta5(tmp_path, palette=palette)
    listed = [names[2], names[0]]
    (tmp_path / 'split.txt').write_text(''.join(n + '\n' for n in listed))
    dataset = _build(data_root=str(tmp_path), ann_file='split.txt')
    assert len(dataset) == 2
    from mmseg.datasets import CityscapesDataset
    assert dataset.metainfo['classes'] == tuple(
        CityscapesDataset.METAINFO['classes'])
    for position, name in enumerate(listed):
        sample = dataset[position]
        assert sample['data_samples'].img_path.endswith(
            os.path.join('images', name + '.png'))
        ids = _label_ids(int(name))
        gt = _gt(sample)
        np.testing.assert_array_equal(gt, _expected(ids))
        assert set(np.unique(gt)) <= set(range(19)) | {255}
        assert sample['inputs'].shape == (3, HEIGHT, WIDTH)


def test_without_list_every_image_is_used(tmp_path):
    names = _fake_gta5(tmp_path, count=3)
    dataset = _build(data_root=str(tmp_path))
    assert [os.path.basename(dataset.get_data_info(i)['img_path'])
            for i in range(len(dataset))] == [n + '.png' for n in names]
    np.testing.assert_array_equal(_gt(dataset[1]),
                                  _expected(_label_ids(2)))


def test_class_subset_composes_with_the_id_map(tmp_path):
    _fake_gta5(tmp_path, count=1)
    dataset = _build(data_root=str(tmp_path),
                     metainfo=dict(classes=('car', 'road')))
    ids = _label_ids(1)
    expected = np.full(ids.shape, 255, np.uint8)
    expected[ids == 26] = 0  # car
    expected[ids == 7] = 1   # road
    np.testing.assert_array_equal(_gt(dataset[0]), expected)
    assert dataset.metainfo['palette'] == [[0, 0, 142], [128, 64, 128]]


def test_reduce_zero_label_is_refused(tmp_path):
    _fake_gta5(tmp_path, count=1)
    with pytest.raises(ValueError, match='reduce_zero_label'):
        _build(data_root=str(tmp_path), reduce_zero_label=True)


def test_config_train_pipeline_reads_gta5(tmp_path):
    """The GTA5 training dataset of a shipped config, pointed at the fake
    folder, runs mmseg's full Cityscapes training pipeline."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS

    import mmnorm.mmseg  # noqa: F401
    names = _fake_gta5(tmp_path, count=2)
    (tmp_path / 'train.txt').write_text(''.join(n + '\n' for n in names))
    cfg = Config.fromfile(GTA5_CONFIG)
    dataset_cfg = cfg.train_dataloader.dataset
    assert dataset_cfg.type == 'GTA5Dataset'
    assert os.path.normpath(dataset_cfg.ann_file) == os.path.join(
        SHIPPED_SPLITS, 'train.txt')
    dataset_cfg.update(data_root=str(tmp_path), ann_file='train.txt')
    with DefaultScope.overwrite_default_scope('mmseg'):
        dataset = DATASETS.build(dataset_cfg)
    gt = _gt(dataset[0])
    assert set(np.unique(gt)) <= set(range(19)) | {255}
    assert len(set(np.unique(gt)) - {255}) > 1


# ---------------------------------------------------------------------------
# the split tool

def _read(path) -> bytes:
    with open(path, 'rb') as f:
        return f.read()


def test_split_is_seeded_disjoint_and_complete(tmp_path):
    tool = _load_tool()
    first = tool.main(['--seed', '0', '--out-dir', str(tmp_path / 'a')])
    second = tool.main(['--seed', '0', '--out-dir', str(tmp_path / 'b')])
    assert [_read(p) for p in first] == [_read(p) for p in second]
    splits = {os.path.basename(p)[:-4]: _read(p).decode().split()
              for p in first}
    sizes = {name: len(names) for name, names in splits.items()}
    assert sizes == dict(train=12403, val=6382, test=6181)
    everything = [n for names in splits.values() for n in names]
    assert len(set(everything)) == len(everything) == 24966
    assert set(everything) == {f'{i:05d}' for i in range(1, 24967)}
    for names in splits.values():
        assert names == sorted(names)
    other = tool.split_names(tool.gta5_names(), seed=1)
    assert other['train'] != splits['train']


def test_shipped_lists_are_the_tool_output_for_seed_0(tmp_path):
    tool = _load_tool()
    paths = tool.main(['--seed', '0', '--out-dir', str(tmp_path)])
    for path in paths:
        shipped = os.path.join(SHIPPED_SPLITS, os.path.basename(path))
        assert _read(shipped) == _read(path), (
            f'{shipped} differs from gta5_split.py --seed 0')


def test_split_of_a_folder_on_disk(tmp_path):
    tool = _load_tool()
    names = _fake_gta5(tmp_path / 'gta5', count=6)
    out = tmp_path / 'splits'
    paths = tool.main(['--data-root', str(tmp_path / 'gta5'), '--sizes',
                       '3', '2', '--out-dir', str(out)])
    parts = [_read(p).decode().split() for p in paths]
    assert [len(p) for p in parts] == [3, 2, 1]
    assert sorted(n for p in parts for n in p) == names
    os.remove(tmp_path / 'gta5' / 'labels' / '00004.png')
    with pytest.raises(SystemExit, match='no label'):
        tool.main(['--data-root', str(tmp_path / 'gta5'), '--out-dir',
                   str(out)])
    with pytest.raises(ValueError, match='do not fit'):
        tool.split_names(names, sizes=(5, 5))
    with pytest.raises(SystemExit, match='do not fit'):
        tool.main(['--sizes', '20000', '5000', '--out-dir', str(out)])
