"""Command line: ``python -m skelcl.data prepare-ntu --raw DIR --out DIR --benchmark NAME [--workers K]``."""

from __future__ import annotations

import argparse
import sys

from .prepare import prepare_ntu
from .splits import BENCHMARKS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m skelcl.data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare-ntu", help="raw NTU RGB+D .skeleton files -> a memory-mappable dataset")
    p.add_argument("--raw", required=True, help="directory of .skeleton files")
    p.add_argument("--out", required=True, help="output directory (rerun with the same one to resume)")
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    p.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    p.add_argument("--max-frames", type=int, default=300, help="cap on the stored frames per sample")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        s = prepare_ntu(args.raw, args.out, args.benchmark, workers=args.workers, max_frames=args.max_frames,
                        progress=not args.no_progress)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{s.num_samples} samples written to {s.out_dir} in {s.seconds:.1f} s; "
          f"{s.num_skipped_missing} on the missing-skeleton list, {len(s.skipped)} malformed (see meta.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
