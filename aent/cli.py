"""The ``aent`` command line. Each subcommand lives in its own module and is imported only when it runs."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

# name -> (module with a ``main(argv) -> int``, one-line help)
SUBCOMMANDS = {
    "demo": ("aent.experiments.demo", "GRPO + AEnt end to end on a tiny model, on a CPU in minutes"),
    "vocab-sweep": (
        "aent.experiments.vocab",
        "the paper's vocabulary argument: GRPO with four entropy settings as the output layer grows to 151,936 logits",
    ),
    "toy-mdp": (
        "aent.experiments.toy",
        "the paper's controlled experiment (Figure 1): entropy bonuses in a 100k-action MDP",
    ),
    "prepare-data": ("aent.data", "convert local MATH / GSM8K / OpenR1 / evaluation files into verl parquet"),
    "info": ("aent.info", "versions and the entropy implementation that would run on each device"),
}


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="aent", description="AEnt: clamped entropy with an adaptive coefficient.")
    parser.add_argument(
        "command", choices=sorted(SUBCOMMANDS), help="; ".join(f"{k}: {v[1]}" for k, v in SUBCOMMANDS.items())
    )
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command (see aent COMMAND --help)")
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0 if argv else 2
    ns = parser.parse_args(argv[:1])
    module_name, _ = SUBCOMMANDS[ns.command]
    module = importlib.import_module(module_name)
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
