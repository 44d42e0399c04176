"""Convert the authors' SN / SSN ImageNet checkpoint for mmnorm backbones.

The output loads into an mmdet / mmseg ``ResNet`` built with
``norm_cfg=dict(type='SN')`` (or ``'SSN'``), e.g. through
``init_cfg=dict(type='Pretrained', checkpoint='sn_r50_mmnorm.pth')``.
The authors trained with SN's keep factor 0.9 (mmnorm ``momentum=0.1``).

    python tools/model_converters/official_sn_to_mmnorm.py SRC DST \
        [--keep-head]
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

import torch  # noqa: E402

from mmnorm.converters import convert_official_sn  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help="the authors' checkpoint")
    parser.add_argument('dst', help='where to write the mmnorm state dict')
    parser.add_argument('--keep-head', action='store_true',
                        help='keep the ImageNet classifier (fc.*)')
    args = parser.parse_args(argv)
    checkpoint = torch.load(args.src, map_location='cpu', weights_only=True)
    state = checkpoint.get('state_dict', checkpoint)
    converted = convert_official_sn(state, keep_head=args.keep_head)
    torch.save(converted, args.dst)
    layers = sum(k.endswith('.mean_weight') for k in converted)
    fixed = sum(k.endswith('_choice') and int(v) >= 0
                for k, v in converted.items())
    print(f'wrote {args.dst}: {len(converted)} tensors, {layers} SN/SSN '
          f'layers, {fixed} fixed SSN choices')


if __name__ == '__main__':
    main()
