"""mmnorm's entry point for mmdet.

Put it in a config's ``custom_imports`` (``imports=['mmnorm.mmdet']``): it
registers mmnorm's layers and, in mmdet's own registry, mmnorm's mmdet
backbones (``ResNetIBN``, ``ResNeXtIBN``, ``ResNetIBNb``, ``ResNetKN``,
``ResNetSW``),
so users without mmseg or mmaction2 are never affected by those toolkits.
"""
import mmdet.models  # noqa: F401
from mmdet.models.backbones import ResNet, ResNeXt
from mmdet.registry import MODELS

import mmnorm  # noqa: F401  (registers the norm layers)
from mmnorm.models.ibn_resnet import ibn_a_variant, ibn_b_variant
from mmnorm.models.kn_resnet import kn_variant
from mmnorm.models.sw_resnet import sw_variant

ResNetIBN = MODELS.register_module(
    module=ibn_a_variant(ResNet, 'ResNetIBN'))
ResNeXtIBN = MODELS.register_module(
    module=ibn_a_variant(ResNeXt, 'ResNeXtIBN'))
ResNetIBNb = MODELS.register_module(
    module=ibn_b_variant(ResNet, 'ResNetIBNb'))
ResNetKN = MODELS.register_module(module=kn_variant(ResNet, 'ResNetKN'))
ResNetSW = MODELS.register_module(module=sw_variant(ResNet, 'ResNetSW'))
