"""Collapse a trained model's fixed SSN layers for deployment and report.

Builds the model of CONFIG, loads CHECKPOINT (weights-only), replaces every
fully fixed SSN layer (and with --harden-sn every SN layer, by the argmax
of its ratios) with the smallest module computing the same thing
(see ``mmnorm/deploy.py``), checks each replacement on sample input and
prints what every layer became.

    python tools/deployment/collapse_norms.py CONFIG CHECKPOINT \
        [--harden-sn] [--out collapsed.pth] [--report report.json]
"""
import argparse
import dataclasses
import json
import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), '..', '..'))

import torch  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import MODELS, DefaultScope  # noqa: E402
from mmengine.runner import load_checkpoint  # noqa: E402

import mmnorm  # noqa: E402,F401
from mmnorm.compat.checkpoint import refuse_unsafe_checkpoints  # noqa: E402
from mmnorm.deploy import collapse_fixed_norms, format_report  # noqa: E402
from mmnorm.engine.toolkits import import_entry_point  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--harden-sn', action='store_true',
                        help='also replace SN layers by their argmax choice')
    parser.add_argument('--out', help='save the collapsed state dict')
    parser.add_argument('--report', help='save the report as JSON')
    args = parser.parse_args(argv)

    cfg = Config.fromfile(args.config)
    scope = cfg.get('default_scope')
    import_entry_point(scope)
    with DefaultScope.overwrite_default_scope(scope):
        model = MODELS.build(cfg.model)
    with refuse_unsafe_checkpoints():
        load_checkpoint(model, args.checkpoint, map_location='cpu')
    model.eval()
    report = collapse_fixed_norms(model, harden_sn=args.harden_sn)
    print(format_report(report) if report else
          'No fixed SSN layer (and --harden-sn not given): nothing to do.')
    if args.report:
        with open(args.report, 'w') as f:
            json.dump([dataclasses.asdict(r) for r in report], f, indent=2)
    if args.out:
        torch.save(model.state_dict(), args.out)


if __name__ == '__main__':
    main()
