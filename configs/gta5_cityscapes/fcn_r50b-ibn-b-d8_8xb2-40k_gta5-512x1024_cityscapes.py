# FCN with IBN-Net50-b (IN in the stem and after the last block of stages
# 1-2), trained on GTA5 and tested on Cityscapes.
_base_ = './_base_/gta5-512x1024_cityscapes.py'
model = dict(backbone=dict(type='ResNetIBNb'))
