# FCN with IBN-Net50-b (IN in the stem and after the last block of stages
# 1-2), trained on Cityscapes and tested on GTA5.
_base_ = './_base_/cityscapes-512x1024_gta5.py'
model = dict(backbone=dict(type='ResNetIBNb'))
