# mmseg's PSPNet R50-D8 on Cityscapes (512x1024 crops) on 8 GPUs x 2
# images for 40k iterations: as many images as mmseg's 4 x 2 x 80k.
_base_ = [
    'mmseg::pspnet/pspnet_r50-d8_4xb2-40k_cityscapes-512x1024.py',
    '../../ade20k/_base_/mmnorm_seg.py'
]
model = dict(pretrained=None)  # offline by default; see the README
train_dataloader = dict(batch_size=2)
