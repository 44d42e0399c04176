"""Small synthetic datasets in the toolkits' real formats (no toolkit
imports: the files are read by mmdet's CocoDataset and mmseg's
CityscapesDataset)."""
from .synthetic import (
    ensure_synthetic_cityscapes,
    ensure_synthetic_coco,
    render_scene,
)

__all__ = ['ensure_synthetic_cityscapes', 'ensure_synthetic_coco',
           'render_scene']

# GTA5Dataset subclasses mmseg's BaseSegDataset: imported on first access,
# so that importing this package still imports no toolkit.
_MMSEG_NAMES = ('GTA5Dataset', 'LABEL_ID_TO_TRAIN_ID')
__all__ += list(_MMSEG_NAMES)


def __getattr__(name):
    if name in _MMSEG_NAMES:
        from . import gta5
        return getattr(gta5, name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
