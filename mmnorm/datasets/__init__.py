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
