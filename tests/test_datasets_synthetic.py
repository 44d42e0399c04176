"""Synthetic datasets: deterministic, non-trivial, read by the toolkits."""
import hashlib
import json
import os

import numpy as np

from mmnorm.datasets import (
    ensure_synthetic_cityscapes,
    ensure_synthetic_coco,
    render_scene,
)
from mmnorm.datasets.synthetic import CLASSES, rle_encode


def _digest(root):
    h = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            with open(os.path.join(folder, name), 'rb') as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = ensure_synthetic_coco(str(tmp_path / 'a'), seed=1, num_train=3,
                              num_val=1)
    b = ensure_synthetic_coco(str(tmp_path / 'b'), seed=1, num_train=3,
                              num_val=1)
    c = ensure_synthetic_coco(str(tmp_path / 'c'), seed=2, num_train=3,
                              num_val=1)
    assert _digest(a) == _digest(b) != _digest(c)
    mtime = os.path.getmtime(os.path.join(a, 'train2017', '000000.png'))
    ensure_synthetic_coco(a, seed=1, num_train=3, num_val=1)  # reused
    assert os.path.getmtime(
        os.path.join(a, 'train2017', '000000.png')) == mtime


def test_scenes_have_classes_sizes_and_occlusion():
    labels, areas = set(), []
    for seed in range(30):
        image, objects = render_scene(seed)
        assert image.dtype == np.uint8 and image.std() > 20  # textured
        for obj in objects:
            labels.add(obj.label)
            areas.append(int(obj.mask.sum()))
        masks = [o.mask for o in objects]
        for i, m in enumerate(masks):  # visible masks never overlap
            for other in masks[i + 1:]:
                assert not (m & other).any()
    assert labels == set(range(len(CLASSES)))
    assert max(areas) > 5 * min(areas)
    # partial occlusion: some objects lost part of their area, none more
    # than the 70% at which they are dropped
    partly_hidden = 0
    for seed in range(30):
        for obj in render_scene(seed)[1]:
            visible = int(obj.mask.sum())
            assert 0.3 * obj.full_area <= visible <= obj.full_area
            partly_hidden += visible < obj.full_area
    assert partly_hidden >= 5


def test_rle_round_trip_with_pycocotools():
    from pycocotools import mask as mask_utils
    _, objects = render_scene(5)
    for obj in objects:
        rle = rle_encode(obj.mask)
        decoded = mask_utils.decode(mask_utils.frPyObjects(
            rle, *rle['size']))
        assert np.array_equal(decoded.astype(bool), obj.mask)


def test_mmdet_coco_dataset_reads_it(tmp_path):
    from mmdet.datasets import CocoDataset
    from mmdet.utils import register_all_modules

    import mmnorm.mmdet  # noqa: F401
    register_all_modules()
    root = ensure_synthetic_coco(str(tmp_path), seed=0, num_train=2,
                                 num_val=1)
    dataset = CocoDataset(
        data_root=root, ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        metainfo=dict(classes=CLASSES),
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='LoadAnnotations', with_bbox=True,
                       with_mask=True),
                  dict(type='PackDetInputs')])
    sample = dataset[0]
    instances = sample['data_samples'].gt_instances
    assert len(instances) > 0
    assert instances.masks.masks.shape[1:] == (128, 128)
    ann = json.load(open(os.path.join(
        root, 'annotations', 'instances_train2017.json')))
    assert {c['name'] for c in ann['categories']} == set(CLASSES)


def test_mmseg_cityscapes_dataset_reads_it(tmp_path):
    from mmseg.datasets import CityscapesDataset
    from mmseg.utils import register_all_modules

    import mmnorm.mmseg  # noqa: F401
    register_all_modules()
    root = ensure_synthetic_cityscapes(str(tmp_path), seed=0, num_train=2,
                                       num_val=1)
    dataset = CityscapesDataset(
        data_root=root,
        data_prefix=dict(img_path='leftImg8bit/train',
                         seg_map_path='gtFine/train'),
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='LoadAnnotations'),
                  dict(type='PackSegInputs')])
    assert len(dataset) == 2
    seg = dataset[0]['data_samples'].gt_sem_seg.data
    assert set(seg.unique().tolist()) <= {0, 7, 11, 13}
    assert len(seg.unique()) > 1


def test_scene_options_keep_objects_inside_and_annotated():
    import numpy as np

    from mmnorm.datasets.synthetic import render_scene
    for seed in range(20):
        _, objects = render_scene(seed, 96, 128, inside=True,
                                  max_occlusion=0.4)
        for obj in objects:
            assert obj.mask.sum() >= 0.6 * obj.full_area
            ys, xs = np.nonzero(obj.mask)
            assert ys.min() > 0 and xs.min() > 0
            assert ys.max() < 95 and xs.max() < 127
    # the defaults are unchanged: objects may be cut by the border
    cut = [obj for seed in range(20) for obj in render_scene(seed)[1]
           if obj.mask[:, 0].any() or obj.mask[0].any()
           or obj.mask[:, -1].any() or obj.mask[-1].any()]
    assert cut
