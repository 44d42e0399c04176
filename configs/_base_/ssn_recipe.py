# The authors' Sparse SN recipe as a config fragment: SparsestMax radius
# growing linearly from 0 to 1 over training, lambdas at lr/10 without
# weight decay, and their joint gradient norm clipped at 1.0 (only theirs).
#   _base_ = ['mmdet::...', '../_base_/ssn_recipe.py']
# Set the toolkit's optimizer as usual; this fragment only adds to it.
optim_wrapper = dict(
    type='MixingWeightClipOptimWrapper',
    lambda_max_norm=1.0,
    paramwise_cfg=dict(custom_keys={
        '.mean_weight': dict(lr_mult=0.1, decay_mult=0.0),
        '.var_weight': dict(lr_mult=0.1, decay_mult=0.0),
    }))
custom_hooks = [dict(type='SSNRadiusHook')]
