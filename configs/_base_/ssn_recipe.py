# The authors' Sparse SN recipe: SparsestMax radius growing linearly from 0
# to 1 over training, lambdas at lr/10 without weight decay, and their joint
# gradient norm clipped at 1.0 (only theirs). Variables, merged into the
# toolkit's settings by the config that inherits them (mmengine refuses a
# key such as `optim_wrapper` that two bases define):
#   _base_ = ['mmdet::...', '../_base_/ssn_recipe.py']
#   optim_wrapper = _base_.ssn_optim_wrapper
#   custom_hooks = _base_.ssn_custom_hooks
# `tools/train.py --amp` turns the wrapper into
# AmpMixingWeightClipOptimWrapper: one GradScaler.unscale_, then the lambda
# clipping on the true (unscaled) gradients.
ssn_optim_wrapper = dict(
    type='MixingWeightClipOptimWrapper',
    lambda_max_norm=1.0,
    paramwise_cfg=dict(custom_keys={
        '.mean_weight': dict(lr_mult=0.1, decay_mult=0.0),
        '.var_weight': dict(lr_mult=0.1, decay_mult=0.0),
    }))
ssn_custom_hooks = [dict(type='SSNRadiusHook')]
