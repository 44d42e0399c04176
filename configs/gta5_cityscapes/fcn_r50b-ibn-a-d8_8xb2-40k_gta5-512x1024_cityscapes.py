# FCN with IBN-Net50-a (IN on half the channels of the first norm of every
# block in stages 1-3), trained on GTA5 and tested on Cityscapes.
_base_ = './_base_/gta5-512x1024_cityscapes.py'
model = dict(backbone=dict(type='ResNetIBN'))
