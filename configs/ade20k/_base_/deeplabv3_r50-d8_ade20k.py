# mmseg's DeepLabV3 R50-D8 on ADE20K (80k iterations, 512x512 crops) on
# 8 GPUs x 2 images instead of 4 x 4: same total batch, learning rate and
# schedule, and the per-GPU batch of the SN paper's segmentation runs.
_base_ = [
    'mmseg::deeplabv3/deeplabv3_r50-d8_4xb4-80k_ade20k-512x512.py',
    './mmnorm_seg.py'
]
model = dict(pretrained=None)  # offline by default; see the README
train_dataloader = dict(batch_size=2)
