# The same with 8 GPUs x 4 clips, the paper's small-batch column. The
# learning rate follows the linear scaling rule from 0.01 at 64 clips.
_base_ = './i3d_r50_32x2x1_k400.py'
train_dataloader = dict(batch_size=4)
optim_wrapper = dict(optimizer=dict(lr=0.005))
auto_scale_lr = dict(enable=False, base_batch_size=32)
