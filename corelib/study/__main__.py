"""``python -m corelib.study warm``: compute and cache a profile's records (resumable, one model at a time).

With accelerate, ``accelerate launch -m corelib.study warm ...`` shards the records over processes
(or GPUs): each process computes its share, all write to the one record store.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m corelib.study", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("warm", help="compute and cache all records a profile's notebooks need (resumable)")
    p.add_argument("--profile", default="quick")
    p.add_argument("--data", default=None, help="data directory in BEIR layout (default: $CORELIB_DATA)")
    p.add_argument("--model", action="append", help="only this model of the profile (repeatable)")
    p.add_argument("--no-multilingual", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from ..errors import run_command
    from .core import Study
    from .sharding import shard

    def warm():
        S = Study(args.profile, data=args.data, models=args.model)
        with shard(S) as part:
            S.warm(multilingual=not args.no_multilingual)
        print(f"records of profile {S.p.name} cached for {', '.join(S.p.models)}" + (f" ({part})" if part else ""))

    return run_command(warm)


if __name__ == "__main__":
    sys.exit(main())
