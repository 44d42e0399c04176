"""Plot the IN/LN/BN ratios SN/SSN layers learned.

SOURCE is a checkpoint (or state dict) file, or the ``sn_ratios.jsonl`` log
written by ``SNRatioLoggerHook``. Writes, as PNG and SVG, into --out-dir:
``ratios_depth`` (per layer, network order), ``ratios_stages`` (averaged
per stage) and, from a log with several records, ``ratios_evolution``.

    python tools/analysis_tools/plot_ratios.py SOURCE [--out-dir DIR] \
        [--title TEXT] [--summary]
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

import mmnorm  # noqa: E402,F401  (safe checkpoint loading)
from mmnorm.analysis.plots import (  # noqa: E402
    plot_depth,
    plot_evolution,
    plot_stages,
)
from mmnorm.analysis.ratios import (  # noqa: E402
    load_ratio_history,
    summary_table,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('source', help='checkpoint, state dict or .jsonl')
    parser.add_argument('--out-dir', default='.', help='where figures go')
    parser.add_argument('--title', default='', help='figure title prefix')
    parser.add_argument('--summary', action='store_true',
                        help='also print the per-layer table')
    args = parser.parse_args(argv)
    history = load_ratio_history(args.source)
    os.makedirs(args.out_dir, exist_ok=True)
    records = history[-1][1]
    written = plot_depth(records, osp.join(args.out_dir, 'ratios_depth'),
                         args.title)
    written += plot_stages(records, osp.join(args.out_dir, 'ratios_stages'),
                           args.title)
    if len(history) > 1:
        written += plot_evolution(
            history, osp.join(args.out_dir, 'ratios_evolution'), args.title)
    if args.summary:
        print(summary_table(records))
    print('\n'.join(f'wrote {p}' for p in written))


if __name__ == '__main__':
    main()
