"""Convert the authors' IBN-Net ImageNet checkpoint for mmnorm backbones.

The output loads into ``ResNetIBN`` (IBN-a), ``ResNetIBNb`` (IBN-b) or
``ResNeXtIBN`` of mmdet or mmseg, e.g. through
``init_cfg=dict(type='Pretrained', checkpoint='ibn_a_r50_mmnorm.pth')``.

    python tools/model_converters/official_ibn_to_mmnorm.py SRC DST \
        [--keep-head]
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

import torch  # noqa: E402

from mmnorm.converters import convert_official_ibn  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src', help="the authors' checkpoint")
    parser.add_argument('dst', help='where to write the state dict')
    parser.add_argument('--keep-head', action='store_true')
    args = parser.parse_args(argv)
    checkpoint = torch.load(args.src, map_location='cpu', weights_only=True)
    state = checkpoint.get('state_dict', checkpoint)
    converted = convert_official_ibn(state, keep_head=args.keep_head)
    torch.save(converted, args.dst)
    print(f'wrote {args.dst}: {len(converted)} tensors')


if __name__ == '__main__':
    main()
