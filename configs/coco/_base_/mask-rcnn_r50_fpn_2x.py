# Mask R-CNN R50-FPN, 2x schedule (24 epochs), COCO 2017: mmdet's config as
# the SN paper trained it (8 GPUs x 2 images, SGD lr 0.02); the rows in ../
# set the normalizers, the 4-conv mask head's included.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_2x_coco.py', './norms.py']
custom_imports = dict(imports=['mmnorm.mmdet'], allow_failed_imports=False)
# 16 images per iteration in total; --auto-scale-lr adapts lr to others
auto_scale_lr = dict(enable=False, base_batch_size=16)
