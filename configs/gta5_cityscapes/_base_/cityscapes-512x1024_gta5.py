# Train on Cityscapes train, validate in domain on Cityscapes val
# ("Cityscapes -> Cityscapes"; mmseg's dataloaders unchanged), test across
# domains on the GTA5 test split ("Cityscapes -> GTA5").
_base_ = ['./fcn_r50b-d8_8xb2-40k.py', './gta5.py']
test_dataloader = dict(dataset=_base_.gta5_test)
