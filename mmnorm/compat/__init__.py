"""Workarounds for the pinned OpenMMLab stack, kept in one place so that
they can be deleted when upstream fixes land.

* :mod:`.registry`: which layer types the BN-keyed toolkit paths treat like
  BN (:func:`register_norm_layer`, :func:`register_sync_pair`);
* :mod:`.patches`: the declarative list of every patch of toolkit code;
* :mod:`.checkpoint`, :mod:`.mmaction`: torch 2.6 / mmaction2 packaging
  fixes.
"""
from .registry import (
    is_bn_like,
    is_norm_layer,
    register_bn_loader,
    register_norm_layer,
    register_sync_pair,
    registered_norm_layers,
)

__all__ = ['is_bn_like', 'is_norm_layer', 'register_bn_loader',
           'register_norm_layer', 'register_sync_pair',
           'registered_norm_layers']
