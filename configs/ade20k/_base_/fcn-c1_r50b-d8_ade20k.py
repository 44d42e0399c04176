# The SN paper's segmentation setting on ADE20K: ResNet-50 with the 7x7
# stem (mmseg's `ResNet`, "r50b"; not the deep-stem ResNetV1c of mmseg's
# r50 configs), dilated to output stride 8, a head with a single 3x3 conv
# before the classifier ("c1") and mmseg's auxiliary FCN head on the
# 1024-channel stage (deep supervision, loss weight 0.4). 8 GPUs x 2
# images, mmseg's 80k schedule and data pipeline. Each config sets the
# normalizer of the backbone and both heads.
_base_ = [
    'mmseg::fcn/fcn_r50-d8_4xb4-80k_ade20k-512x512.py', './mmnorm_seg.py'
]
model = dict(
    pretrained=None,  # offline by default; README: local ImageNet weights
    backbone=dict(type='ResNet'),
    decode_head=dict(num_convs=1, concat_input=False))
train_dataloader = dict(batch_size=2)
