# Faster R-CNN R50-FPN, 1x schedule (12 epochs), COCO 2017: mmdet's config
# as the SN paper trained it, 8 GPUs x 2 images, SGD lr 0.02. The rows in
# ../ choose the normalizer of every component.
_base_ = ['mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py', './norms.py']
custom_imports = dict(imports=['mmnorm.mmdet'], allow_failed_imports=False)
# lr 0.02 belongs to a total batch of 16; `--auto-scale-lr` rescales it
auto_scale_lr = dict(enable=False, base_batch_size=16)
