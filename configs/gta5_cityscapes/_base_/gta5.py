# GTA5 (data/gta5/images/*.png, data/gta5/labels/*.png with Cityscapes
# label ids) split by tools/dataset_converters/gta5_split.py --seed 0 into
# the lists of ../splits/ (train 12,403 / val 6,382 / test 6,181 images).
# GTA5Dataset maps the label ids to the 19 Cityscapes train ids.
# Configs put these datasets into mmseg's Cityscapes dataloaders, whose
# pipelines they keep.
gta5_root = 'data/gta5/'
gta5_train = dict(
    type='GTA5Dataset',
    data_root=gta5_root,
    data_prefix=dict(img_path='images', seg_map_path='labels'),
    ann_file='{{ fileDirname }}/../splits/train.txt')
gta5_val = dict(gta5_train, ann_file='{{ fileDirname }}/../splits/val.txt')
gta5_test = dict(gta5_train, ann_file='{{ fileDirname }}/../splits/test.txt')
