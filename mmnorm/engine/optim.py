"""Recommended optimizer settings for models with SN layers.

The authors' detection and segmentation code puts no weight decay on the
mixing weights (the lambdas): decay pulls them toward 0, i.e. toward the
uniform mixture, fighting what the layer learns. mmengine's
``paramwise_cfg.custom_keys`` matches parameter-name substrings, so::

    optim_wrapper = dict(paramwise_cfg=sn_paramwise_cfg())

or, in a text config, the same dict written out (see
``configs/_base_/sn_paramwise.py``).
"""
from __future__ import annotations

MIXING_WEIGHT_NAMES = ('mean_weight', 'var_weight')


def sn_paramwise_cfg(lambda_lr_mult: float = 1.0,
                     norm_decay_mult: float | None = None) -> dict:
    """An mmengine ``paramwise_cfg`` with no weight decay on SN lambdas.

    Args:
        lambda_lr_mult: learning-rate multiplier of the lambdas (the SSN
            recipe uses 0.1).
        norm_decay_mult: if given, also the decay multiplier of all norm
            layers' weight and bias (SN is a ``_BatchNorm`` subclass, so
            mmengine applies it to SN's gamma/beta too).
    """
    rule: dict = dict(decay_mult=0.0)
    if lambda_lr_mult != 1.0:
        rule['lr_mult'] = lambda_lr_mult
    cfg: dict = dict(custom_keys={f'.{name}': dict(rule)
                                  for name in MIXING_WEIGHT_NAMES})
    if norm_decay_mult is not None:
        cfg['norm_decay_mult'] = norm_decay_mult
    return cfg
