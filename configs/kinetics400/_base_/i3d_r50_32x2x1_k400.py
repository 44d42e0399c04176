# Shared by every config in this folder: mmaction2's I3D ResNet-50
# (32 frames, interval 2, 1 clip; 8 GPUs x 8 clips, 100 epochs), made
# offline by default. The leaves only choose the normalizer and the clips
# per GPU; the I3D head has no normalization layer.
_base_ = ('mmaction::recognition/i3d/'
          'i3d_imagenet-pretrained-r50_8xb8-32x2x1-100e_kinetics400-rgb.py')
# Registers SN, lets mmaction2 1.2.0 import, and makes 2D->3D inflation of
# ImageNet weights work for SN layers (mmnorm.models.inflate).
custom_imports = dict(imports=['mmnorm.mmaction'], allow_failed_imports=False)

# The bundled config downloads torchvision://resnet50. Nothing is fetched
# here: pass local 2D ImageNet weights to inflate (see README.md), e.g.
#   --cfg-options model.backbone.pretrained=checkpoints/resnet50.pth
model = dict(backbone=dict(pretrained=None, pretrained2d=True))
load_from = None

# Statistics stay per GPU (no SyncBN), as in the paper's (8 GPUs, clips)
# settings. auto_scale_lr: the lr below is for 8 GPUs x 8 clips.
train_dataloader = dict(batch_size=8)
optim_wrapper = dict(optimizer=dict(lr=0.01))
auto_scale_lr = dict(enable=False, base_batch_size=64)
