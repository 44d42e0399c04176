"""Write a seeded train/val/test split of GTA5 as mmseg ``ann_file`` lists.

GTA5 has no official split. The IBN-Net paper divides its 24,966 images at
random into 12,403 training, 6,382 validation and 6,181 test images but
published no lists; these are mmnorm's lists with those sizes. Every image
name is ranked by the SHA-256 of ``"<seed>/<name>"`` (independent of the
Python and numpy versions); the first ``--sizes TRAIN`` names of that
order are the training set, the next ``VAL`` the validation set, the rest
the test set. Each file lists its names sorted, one per line, without
suffix (``00001``), as ``GTA5Dataset(ann_file=...)`` reads them. The same
seed and names always give byte-identical files.

    python tools/dataset_converters/gta5_split.py --seed 0
    python tools/dataset_converters/gta5_split.py --data-root data/gta5

Without ``--data-root`` the names are GTA5's own, ``00001`` to ``24966``
(what ``configs/gta5_cityscapes/splits/`` holds); with it, the stems of
``images/*.png`` that also have a label in ``labels/``.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import os.path as osp
from typing import Optional, Sequence

NUM_IMAGES = 24966
#: training and validation sizes of the IBN-Net paper; the test set is the
#: rest (6,181 images of the full dataset)
DEFAULT_SIZES = (12403, 6382)
SPLITS = ('train', 'val', 'test')
DEFAULT_OUT = osp.normpath(osp.join(osp.dirname(osp.abspath(__file__)),
                                   '..', '..', 'configs', 'gta5_cityscapes',
                                   'splits'))


def gta5_names(num_images: int = NUM_IMAGES) -> list[str]:
    """GTA5's image names without suffix: ``00001`` ... ``24966``."""
    return [f'{index:05d}' for index in range(1, num_images + 1)]


def names_on_disk(data_root: str) -> list[str]:
    """Stems of ``images/*.png`` under ``data_root`` that have a label."""
    image_dir = osp.join(data_root, 'images')
    label_dir = osp.join(data_root, 'labels')
    names = sorted(osp.splitext(f)[0] for f in os.listdir(image_dir)
                   if f.endswith('.png'))
    missing = [n for n in names
               if not osp.isfile(osp.join(label_dir, n + '.png'))]
    if missing:
        raise SystemExit(f'{len(missing)} images have no label in '
                         f'{label_dir}, e.g. {missing[:3]}')
    if not names:
        raise SystemExit(f'no .png images in {image_dir}')
    return names


def split_names(names: Sequence[str], seed: int = 0,
                sizes: Sequence[int] = DEFAULT_SIZES) -> dict[str, list]:
    """``{'train': [...], 'val': [...], 'test': [...]}``, each sorted.

    Args:
        names: all image names (unique).
        seed: any integer; changes the order, hence the split.
        sizes: training and validation sizes; the test set gets the rest.
    """
    if len(set(names)) != len(names):
        raise ValueError('image names must be unique')
    train, val = sizes
    if train < 0 or val < 0 or train + val > len(names):
        raise ValueError(f'sizes {train} + {val} do not fit into '
                         f'{len(names)} images')

    def rank(name: str) -> str:
        return hashlib.sha256(f'{seed}/{name}'.encode()).hexdigest()

    order = sorted(names, key=lambda n: (rank(n), n))
    parts = (order[:train], order[train:train + val], order[train + val:])
    return {split: sorted(part) for split, part in zip(SPLITS, parts)}


def write_splits(splits: dict, out_dir: str) -> list[str]:
    """Write ``<split>.txt`` files (``\\n`` line ends); returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for split in SPLITS:
        path = osp.join(out_dir, f'{split}.txt')
        with open(path, 'w', newline='\n') as f:
            f.writelines(f'{name}\n' for name in splits[split])
        paths.append(path)
    return paths


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Seeded train/val/test split of GTA5 (mmseg ann_file '
        'lists)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--data-root',
                        help='GTA5 folder with images/ and labels/ (default: '
                        f'the names 00001-{NUM_IMAGES:05d})')
    parser.add_argument('--sizes', type=int, nargs=2, default=DEFAULT_SIZES,
                        metavar=('TRAIN', 'VAL'),
                        help='training and validation sizes; the test set '
                        'is the rest (default: %(default)s)')
    parser.add_argument('--out-dir', default=DEFAULT_OUT,
                        help='where to write train.txt, val.txt, test.txt '
                        '(default: configs/gta5_cityscapes/splits)')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> list[str]:
    args = parse_args(argv)
    names = (names_on_disk(args.data_root) if args.data_root
             else gta5_names())
    try:
        splits = split_names(names, args.seed, args.sizes)
    except ValueError as e:
        raise SystemExit(str(e)) from e
    paths = write_splits(splits, args.out_dir)
    for split, path in zip(SPLITS, paths):
        print(f'{split}: {len(splits[split])} images -> {path}')
    return paths


if __name__ == '__main__':
    main()
