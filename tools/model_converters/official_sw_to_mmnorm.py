"""Convert the authors' Switchable Whitening ImageNet checkpoint for
mmnorm's ``ResNetSW`` backbones (mmdet and mmseg).

The output loads through ``init_cfg=dict(type='Pretrained',
checkpoint='sw_r50_mmnorm.pth')`` into a ``ResNetSW`` built with the
``sw_cfg`` the converter prints; it also prints every change in behaviour
(``mmnorm/converters_sw.py``).

    python tools/model_converters/official_sw_to_mmnorm.py SRC DST \
        [--keep-head]
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

import torch  # noqa: E402

from mmnorm.converters_sw import convert_official_sw  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help="the authors' checkpoint")
    parser.add_argument('dst', help='where to write the mmnorm state dict')
    parser.add_argument('--keep-head', action='store_true',
                        help='keep the ImageNet classifier (fc.*)')
    args = parser.parse_args(argv)
    checkpoint = torch.load(args.src, map_location='cpu', weights_only=True)
    state = checkpoint.get('state_dict', checkpoint)
    converted, report = convert_official_sw(state, keep_head=args.keep_head)
    torch.save(converted, args.dst)
    print(f'wrote {args.dst}: {len(converted)} tensors')
    for line in report:
        print(f'  {line}')


if __name__ == '__main__':
    main()
