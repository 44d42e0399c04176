"""Seeded synthetic scenes written as COCO instance segmentation and as a
Cityscapes-layout semantic segmentation dataset.

Every image has a textured, noisy background (random oriented stripes,
blobs and pixel noise) and several objects of three shape classes
(rectangle, ellipse, triangle) with random size, aspect ratio, rotation,
position and colour, drawn in random order so that later objects partly
occlude earlier ones. Annotations describe the *visible* part of each
object (bounding box, RLE mask, area); objects hidden too much are dropped.

The same seed and sizes give byte-identical files. ``ensure_*`` writes a
dataset on first use and reuses it afterwards (a stamp file records what
was generated).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

CLASSES = ('rectangle', 'ellipse', 'triangle')
# Cityscapes train ids used for the semantic version
BACKGROUND_TRAIN_ID = 0                      # road
CLASS_TRAIN_IDS = {'rectangle': 13,          # car
                   'ellipse': 11,            # person
                   'triangle': 7}            # traffic sign
MIN_VISIBLE = 0.3  # drop objects with less than 30% of their area visible


@dataclass
class SceneObject:
    label: int           # index into CLASSES
    mask: np.ndarray     # (H, W) bool, visible part
    full_area: int       # pixels before occlusion


def _texture(rng: np.random.Generator, height: int, width: int
             ) -> np.ndarray:
    """(H, W, 3) float background: stripes + smooth blobs + pixel noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.empty((height, width, 3))
    base = rng.uniform(60, 190, size=3)
    for c in range(3):
        angle = rng.uniform(0, np.pi)
        freq = rng.uniform(0.05, 0.3)
        stripes = np.sin(freq * (xx * np.cos(angle) + yy * np.sin(angle))
                         + rng.uniform(0, 2 * np.pi))
        blob_y, blob_x = rng.uniform(0, height), rng.uniform(0, width)
        blob = np.exp(-((yy - blob_y) ** 2 + (xx - blob_x) ** 2)
                      / (2 * (0.3 * max(height, width)) ** 2))
        image[..., c] = (base[c] + 25 * stripes + 50 * (blob - 0.5)
                         + rng.normal(0, 12, size=(height, width)))
    return image


def _shape_mask(rng: np.random.Generator, label: int, height: int,
                width: int, inside: bool = False) -> np.ndarray:
    """A rotated rectangle, ellipse or triangle of random size and aspect,
    cut by the image border unless ``inside``."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    size = rng.uniform(0.12, 0.4) * min(height, width)
    aspect = rng.uniform(0.5, 2.0)
    half_w, half_h = size * np.sqrt(aspect) / 2, size / np.sqrt(aspect) / 2
    # inside: the centre keeps the circumscribed circle in the image
    margin = min(np.hypot(half_w, half_h), min(height, width) / 2) \
        if inside else 0.0
    cy = rng.uniform(margin, height - margin)
    cx = rng.uniform(margin, width - margin)
    angle = rng.uniform(0, np.pi)
    # coordinates in the object's frame
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    if CLASSES[label] == 'rectangle':
        return (np.abs(u) <= half_w) & (np.abs(v) <= half_h)
    if CLASSES[label] == 'ellipse':
        return (u / half_w) ** 2 + (v / half_h) ** 2 <= 1
    # isosceles triangle: apex up, base at v = half_h
    inside = (v <= half_h) & (v >= -half_h)
    half_width_at_v = half_w * (v + half_h) / (2 * half_h)
    return inside & (np.abs(u) <= half_width_at_v)


def render_scene(seed: int, height: int = 128, width: int = 128,
                 max_objects: int = 6, inside: bool = False,
                 max_occlusion: Optional[float] = None
                 ) -> tuple[np.ndarray, list]:
    """One scene: ``(image (H, W, 3) uint8 BGR, [SceneObject, ...])``.

    Args:
        inside: objects lie entirely inside the image (default: they may be
            cut by the border).
        max_occlusion: when set, an object that would hide more than this
            share of an earlier object is not drawn, so every object in the
            image is annotated (default: objects hidden beyond
            ``1 - MIN_VISIBLE`` stay in the image, unannotated).
    """
    rng = np.random.default_rng(seed)
    image = _texture(rng, height, width)
    drawn: list[tuple[int, np.ndarray, int]] = []  # label, visible, area
    for _ in range(int(rng.integers(2, max_objects + 1))):
        label = int(rng.integers(len(CLASSES)))
        mask = _shape_mask(rng, label, height, width, inside)
        if mask.sum() < 30:
            continue
        colour = rng.uniform(0, 255, size=3)
        shade = 1 + 0.15 * rng.normal(size=(height, width, 1))
        if max_occlusion is not None and any(
                (vis & ~mask).sum() < (1 - max_occlusion) * area
                for _, vis, area in drawn):
            continue
        image = np.where(mask[..., None], colour * shade, image)
        # the new object hides what lies under it
        drawn = [(lab, vis & ~mask, area) for lab, vis, area in drawn]
        drawn.append((label, mask, int(mask.sum())))
    objects = [SceneObject(label, visible, area)
               for label, visible, area in drawn
               if visible.sum() >= max(MIN_VISIBLE * area, 20)]
    return np.clip(image, 0, 255).astype(np.uint8), objects


def rle_encode(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE (column-major runs, starting with zeros)."""
    flat = np.asfortranarray(mask).reshape(-1, order='F').astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return dict(size=list(mask.shape), counts=counts)


def _scene_seed(seed: int, split: str, index: int) -> int:
    return int(hashlib.sha256(f'{seed}/{split}/{index}'.encode())
               .hexdigest()[:12], 16)


def _stamp_ok(root: str, params: dict) -> bool:
    path = os.path.join(root, '.mmnorm_synthetic.json')
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return json.load(f) == params


def _write_stamp(root: str, params: dict) -> None:
    with open(os.path.join(root, '.mmnorm_synthetic.json'), 'w') as f:
        json.dump(params, f, sort_keys=True)


def _write_png(path: str, array: np.ndarray) -> None:
    import cv2
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not cv2.imwrite(path, array):
        raise OSError(f'could not write {path}')


def _coco_scene(job: tuple) -> tuple[dict, list]:
    """Render and write one COCO image; its image entry and annotations
    (without annotation ids). ``job``: root, seed, split, index, height,
    width, inside, max_occlusion (a tuple, so a process pool can map it)."""
    root, seed, split, index, height, width, inside, max_occlusion = job
    image, objects = render_scene(_scene_seed(seed, split, index),
                                  height, width, inside=inside,
                                  max_occlusion=max_occlusion)
    file_name = f'{index:06d}.png'
    _write_png(os.path.join(root, f'{split}2017', file_name), image)
    annotations = []
    for obj in objects:
        ys, xs = np.nonzero(obj.mask)
        x0, y0 = int(xs.min()), int(ys.min())
        annotations.append(dict(
            image_id=index + 1, category_id=obj.label + 1, iscrowd=0,
            area=int(obj.mask.sum()),
            bbox=[x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1],
            segmentation=rle_encode(obj.mask)))
    return (dict(id=index + 1, file_name=file_name, height=height,
                 width=width), annotations)


def ensure_synthetic_coco(root: str, seed: int = 0, num_train: int = 8,
                          num_val: int = 4, height: int = 128,
                          width: int = 128, inside: bool = False,
                          max_occlusion: Optional[float] = None,
                          workers: int = 1) -> str:
    """COCO-format instance segmentation data under ``root``.

    Layout (mmdet's ``CocoDataset`` defaults): ``train2017/``,
    ``val2017/`` with PNG images and ``annotations/instances_{split}2017
    .json`` with boxes, uncompressed-RLE masks and the three classes.
    Generated only if ``root`` does not already hold the same dataset.
    ``inside`` and ``max_occlusion`` are passed to :func:`render_scene`.
    ``workers`` > 1 renders the scenes in that many processes; the files
    are the same bytes as with one.
    """
    if not isinstance(workers, int) or workers < 1:
        raise ValueError('ensure_synthetic_coco: workers must be an int >= '
                         f'1, got {workers!r}')
    params = dict(kind='coco', seed=seed, num_train=num_train,
                  num_val=num_val, height=height, width=width)
    scene = dict(inside=inside, max_occlusion=max_occlusion)
    if inside or max_occlusion is not None:
        params.update(scene)
    if _stamp_ok(root, params):
        return root
    categories = [dict(id=i + 1, name=name) for i, name in enumerate(CLASSES)]
    pool = None
    if workers > 1:
        import multiprocessing as mp
        methods = mp.get_all_start_methods()
        pool = mp.get_context('fork' if 'fork' in methods else None).Pool(
            workers)
    try:
        for split, count in (('train', num_train), ('val', num_val)):
            jobs = [(root, seed, split, index, height, width, inside,
                     max_occlusion) for index in range(count)]
            scenes = (pool.imap(_coco_scene, jobs, chunksize=16) if pool
                      else map(_coco_scene, jobs))
            images, annotations = [], []
            for image, objects in scenes:  # in index order either way
                images.append(image)
                for obj in objects:
                    annotations.append(dict(id=len(annotations) + 1, **obj))
            path = os.path.join(root, 'annotations',
                                f'instances_{split}2017.json')
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'w') as f:
                json.dump(dict(images=images, annotations=annotations,
                               categories=categories), f, sort_keys=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    _write_stamp(root, params)
    return root


def ensure_synthetic_cityscapes(root: str, seed: int = 0,
                                num_train: int = 8, num_val: int = 4,
                                height: int = 128, width: int = 256) -> str:
    """Cityscapes-layout semantic segmentation data under ``root``:
    ``leftImg8bit/{train,val}/synth/*_leftImg8bit.png`` and
    ``gtFine/{train,val}/synth/*_gtFine_labelTrainIds.png`` (train ids:
    background = road, rectangles = car, ellipses = person, triangles =
    traffic sign), as mmseg's ``CityscapesDataset`` reads them."""
    params = dict(kind='cityscapes', seed=seed, num_train=num_train,
                  num_val=num_val, height=height, width=width)
    if _stamp_ok(root, params):
        return root
    for split, count in (('train', num_train), ('val', num_val)):
        for index in range(count):
            image, objects = render_scene(_scene_seed(seed, split, index),
                                          height, width)
            labels = np.full((height, width), BACKGROUND_TRAIN_ID, np.uint8)
            for obj in objects:
                labels[obj.mask] = CLASS_TRAIN_IDS[CLASSES[obj.label]]
            stem = f'synth_{index:06d}_000019'
            _write_png(os.path.join(root, 'leftImg8bit', split, 'synth',
                                    f'{stem}_leftImg8bit.png'), image)
            _write_png(os.path.join(root, 'gtFine', split, 'synth',
                                    f'{stem}_gtFine_labelTrainIds.png'),
                       labels)
    _write_stamp(root, params)
    return root
