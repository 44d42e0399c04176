# DeepLabV3 R50-D8 on Cityscapes with Sparse SN in the backbone, the ASPP
# head and the auxiliary head, trained with the authors' SSN recipe
# (SparsestMax radius 0 -> 1 over training; lambdas at lr / 10 without weight
# decay, their gradient norm clipped at 1).
_base_ = './_base_/deeplabv3_r50-d8_cityscapes.py'
norm_cfg = dict(type='SSN', momentum=0.003)
model = {part: dict(norm_cfg=norm_cfg)
         for part in ('backbone', 'decode_head', 'auxiliary_head')}
optim_wrapper = _base_.ssn_optim_wrapper
custom_hooks = _base_.ssn_custom_hooks
