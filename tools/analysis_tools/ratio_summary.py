"""Print, per SN/SSN layer, the dominant normalizer and the ratios.

    python tools/analysis_tools/ratio_summary.py SOURCE [--format FMT]

SOURCE: a checkpoint, a state dict or an ``sn_ratios.jsonl`` log (its last
record).
"""
import argparse
import os.path as osp
import signal
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

import mmnorm  # noqa: E402,F401  (safe checkpoint loading)
from mmnorm.analysis.ratios import (  # noqa: E402
    load_ratio_history,
    summary_table,
)


def main(argv=None):
    # behave like other command-line tools when piped into `head`
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('source')
    parser.add_argument('--format', choices=('plain', 'markdown'),
                        default='plain')
    args = parser.parse_args(argv)
    print(summary_table(load_ratio_history(args.source)[-1][1], args.format))


if __name__ == '__main__':
    main()
