# The SN paper's segmentation setting on Cityscapes: ResNet-50 with the
# 7x7 stem ("r50b"), output stride 8, a one-conv head ("c1") and the
# auxiliary FCN head (deep supervision, weight 0.4); see
# configs/ade20k/_base_/fcn-c1_r50b-d8_ade20k.py. 8 GPUs x 2 images for
# 40k iterations: as many images as mmseg's 4 x 2 x 80k schedule.
_base_ = [
    'mmseg::fcn/fcn_r50-d8_4xb2-40k_cityscapes-512x1024.py',
    '../../ade20k/_base_/mmnorm_seg.py'
]
model = dict(
    pretrained=None,  # offline by default; see the README
    backbone=dict(type='ResNet'),  # the 7x7 stem
    decode_head=dict(num_convs=1, concat_input=False))  # "c1": one conv
train_dataloader = dict(batch_size=2)
