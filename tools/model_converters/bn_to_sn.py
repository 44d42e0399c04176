"""Turn a BN-pretrained ResNet checkpoint into an SN (or SSN) checkpoint.

Works with torchvision and OpenMMLab naming. Mixing weights start uniform
(``--bn-ratio 0.333``, like a new SN layer) or in favour of BN
(e.g. ``--bn-ratio 0.8``, which keeps the pretrained behaviour closer).

    python tools/model_converters/bn_to_sn.py SRC DST [--bn-ratio R] [--ssn]
        [--strip-prefix module.]
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

import torch  # noqa: E402

from mmnorm.converters import bn_to_switchable  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('src')
    parser.add_argument('dst')
    parser.add_argument('--bn-ratio', type=float, default=1 / 3,
                        help='initial BN weight (default 1/3: uniform)')
    parser.add_argument('--ssn', action='store_true',
                        help='write SSN buffers too')
    parser.add_argument('--strip-prefix', default='',
                        help="drop this key prefix, e.g. 'module.'")
    args = parser.parse_args(argv)
    checkpoint = torch.load(args.src, map_location='cpu', weights_only=True)
    state = checkpoint.get('state_dict', checkpoint)
    converted = bn_to_switchable(state, args.bn_ratio, args.ssn,
                                 args.strip_prefix)
    torch.save(converted, args.dst)
    layers = sum(k.endswith('.mean_weight') for k in converted)
    print(f'wrote {args.dst}: {layers} BN layers now '
          f"{'SSN' if args.ssn else 'SN'}")


if __name__ == '__main__':
    main()
