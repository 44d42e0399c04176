"""GTA5 (Richter et al., "Playing for Data", ECCV 2016) for mmsegmentation.

mmseg 1.2.2 ships no GTA5 dataset. GTA5 holds 24,966 game frames
(1914 x 1052) with labels in Cityscapes' *label id* convention
(``0``-``33``, the ids of ``cityscapesscripts``' ``labels.py``), stored as
palette PNGs whose indices are the ids::

    data/gta5/images/00001.png ... 24966.png
    data/gta5/labels/00001.png ... 24966.png

Models are trained and scored on the 19 Cityscapes *train ids*, with
every other id ignored (255). :class:`GTA5Dataset` does that conversion
when the annotation is loaded, through mmseg's own ``label_map``
mechanism (the one ``BaseSegDataset`` uses for class subsets): the
dataset's ``label_map`` sends every id 0-254 to its train id or to 255,
and mmseg's ``LoadAnnotations`` applies it. No converted copy of the
labels is needed, and a ``metainfo=dict(classes=...)`` subset of the
Cityscapes classes still works (both maps are composed).

Read the labels with mmseg's default ``imdecode_backend='pillow'``: it
returns the palette indices (the ids), whereas OpenCV expands a palette
PNG into colours. A ``reduce_zero_label`` would shift the ids before the
map and is refused.

``import mmnorm.mmseg`` registers the class in mmseg's ``DATASETS``.
"""
from __future__ import annotations

from typing import Optional, Sequence

from mmseg.datasets import BaseSegDataset, CityscapesDataset
from mmseg.registry import DATASETS

#: Cityscapes label id -> train id for the 19 evaluated classes; every
#: other id (unlabeled, ego vehicle, ..., parking, rail track, guard rail,
#: bridge, tunnel, polegroup, caravan, trailer, license plate) is ignored.
LABEL_ID_TO_TRAIN_ID = {
    7: 0,    # road
    8: 1,    # sidewalk
    11: 2,   # building
    12: 3,   # wall
    13: 4,   # fence
    17: 5,   # pole
    19: 6,   # traffic light
    20: 7,   # traffic sign
    21: 8,   # vegetation
    22: 9,   # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}

IGNORE_INDEX = 255


@DATASETS.register_module()
class GTA5Dataset(BaseSegDataset):
    """GTA5 with Cityscapes label ids, trained and scored on the 19
    Cityscapes classes (same ``classes`` and ``palette`` as mmseg's
    ``CityscapesDataset``).

    Args:
        img_suffix: image file suffix. Default: ``'.png'``.
        seg_map_suffix: label file suffix. Default: ``'.png'``.
        data_prefix: folders under ``data_root``. Default:
            ``dict(img_path='images', seg_map_path='labels')``.
        ann_file: optional list of image names without suffix, one per line
            (e.g. ``00001``), as written by
            ``tools/dataset_converters/gta5_split.py``; without it every
            image under ``images/`` is used.
        **kwargs: as for ``BaseSegDataset`` (``reduce_zero_label`` must stay
            False: the label map already ignores id 0).
    """

    METAINFO = dict(classes=tuple(CityscapesDataset.METAINFO['classes']),
                    palette=[list(c) for c in
                             CityscapesDataset.METAINFO['palette']])

    def __init__(self, img_suffix: str = '.png', seg_map_suffix: str = '.png',
                 data_prefix: Optional[dict] = None,
                 reduce_zero_label: bool = False, **kwargs) -> None:
        if reduce_zero_label:
            raise ValueError(
                'GTA5Dataset: reduce_zero_label would shift the label ids '
                'before they are mapped to train ids; id 0 (unlabeled) is '
                'ignored by the map already')
        if data_prefix is None:
            data_prefix = dict(img_path='images', seg_map_path='labels')
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         data_prefix=data_prefix, reduce_zero_label=False,
                         **kwargs)

    @classmethod
    def get_label_map(cls, new_classes: Optional[Sequence[str]] = None
                      ) -> dict:
        """Label id (0-254) -> index into ``classes`` (or 255).

        Without ``new_classes`` (or with all 19) this is the Cityscapes id
        -> train id map; with a subset, train ids are further mapped to the
        subset's order and the other classes to 255, as mmseg does for its
        own datasets.
        """
        subset = super().get_label_map(new_classes)  # train id -> new index
        label_map = {}
        for label_id in range(IGNORE_INDEX):
            train_id = LABEL_ID_TO_TRAIN_ID.get(label_id, IGNORE_INDEX)
            if subset is not None and train_id != IGNORE_INDEX:
                train_id = subset[train_id]
            label_map[label_id] = train_id
        return label_map

    def _update_palette(self) -> list:
        # The parent picks a subset's colours by the keys of label_map,
        # which are label ids here, not train ids: pick them by class name.
        classes = list(self._metainfo.get('classes', []))
        palette = [list(c) for c in self._metainfo.get('palette', [])]
        all_classes = list(self.METAINFO['classes'])
        if (classes != all_classes and palette == self.METAINFO['palette']
                and set(classes) <= set(all_classes)):
            return [palette[all_classes.index(name)] for name in classes]
        return super()._update_palette()
