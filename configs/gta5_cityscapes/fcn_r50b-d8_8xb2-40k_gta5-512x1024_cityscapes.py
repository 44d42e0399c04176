# FCN with the ResNet-50 baseline (BN, 7x7 stem), trained on GTA5 and
# tested on Cityscapes: the "ResNet50" column of IBN-Net's table.
_base_ = './_base_/gta5-512x1024_cityscapes.py'
