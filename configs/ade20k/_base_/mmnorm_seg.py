# Settings shared by mmnorm's segmentation configs (configs/ade20k,
# configs/cityscapes, configs/gta5_cityscapes). Listed in `_base_` next to
# an mmseg config: it defines no key that mmseg's configs define.
_base_ = ['../../_base_/sn_paramwise.py', '../../_base_/ssn_recipe.py']
custom_imports = dict(imports=['mmnorm.mmseg'], allow_failed_imports=False)

# The configs are written for 8 GPUs x 2 images. `--auto-scale-lr` rescales
# the learning rate linearly for another total batch size.
auto_scale_lr = dict(enable=False, base_batch_size=16)

# mmnorm's optimizer recipes (configs/_base_/), merged into mmseg's SGD
# settings by each config:
#   optim_wrapper = _base_.sn_optim_wrapper     (SN, SyncSN)
#   optim_wrapper = _base_.ssn_optim_wrapper    (SSN; with
#   custom_hooks = _base_.ssn_custom_hooks       the radius schedule)
