# Train on GTA5 (training split), validate in domain on the GTA5 test split
# ("GTA5 -> GTA5"), test across domains on Cityscapes val
# ("GTA5 -> Cityscapes", mmseg's Cityscapes val dataloader unchanged).
_base_ = ['./fcn_r50b-d8_8xb2-40k.py', './gta5.py']
train_dataloader = dict(dataset=_base_.gta5_train)
val_dataloader = dict(dataset=_base_.gta5_test)
