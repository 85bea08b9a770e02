"""`python -m bench NAME`: run one benchmark."""

from __future__ import annotations

import argparse
import sys

from bench import citus, feed, history, load, merge, replicas, security, seed, suite, throughput, tokens
from bench import slice as slice_

BENCHMARKS = {
    "citus": citus,
    "feed": feed,
    "history": history,
    "load": load,
    "merge": merge,
    "replicas": replicas,
    "security": security,
    "seed": seed,
    "slice": slice_,
    "throughput": throughput,
    "tokens": tokens,
    "fanout": throughput.fanout,
    "servers": throughput.servers,
    "all": suite,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    commands = parser.add_subparsers(dest="benchmark", required=True)
    for name, module in BENCHMARKS.items():
        command = commands.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__)
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
