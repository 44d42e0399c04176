# FCN with IBN-Net50-a (IN on half the channels of the first norm of every
# block in stages 1-3), trained on Cityscapes and tested on GTA5.
_base_ = './_base_/cityscapes-512x1024_gta5.py'
model = dict(backbone=dict(type='ResNetIBN'))
