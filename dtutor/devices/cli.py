"""Command line: ``python -m dtutor.devices [--json] [--no-tf] [--no-deepspeed]``."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import dtutor.devices as devices
from dtutor.tables import show


def main(argv: list[str] | None = None) -> int:
    """Command line: print the inventory and the recommendations as tables, or as JSON with ``--json``."""
    parser = argparse.ArgumentParser(prog="python -m dtutor.devices", description=devices.__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-tf", action="store_true", help="do not import TensorFlow")
    parser.add_argument("--no-deepspeed", action="store_true", help="do not import DeepSpeed")
    args = parser.parse_args(argv)
    inv = devices.inventory(include_tf=not args.no_tf, include_deepspeed=not args.no_deepspeed)
    recs = devices.recommend_notebook_runs(inv)
    if args.json:
        doc = {"inventory": inv.to_dict(), "recommendations": [asdict(r) for r in recs]}
        print(json.dumps(doc, indent=2))
    else:
        show(*devices.table_inventory(inv), devices.table_recommendations(recs))
    return 0
