# FCN with the ResNet-50 baseline (BN, 7x7 stem), trained on Cityscapes and
# tested on GTA5: the "ResNet50" column of IBN-Net's table.
_base_ = './_base_/cityscapes-512x1024_gta5.py'
