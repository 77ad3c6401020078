"""numrnn's benchmark suite.

    python -m perf run [--quick] [--json OUT] [--threads 2,1] [--cases PATTERN]
    python -m perf compare BASE.json NEW.json [--z 3] [--floor 0.05]
    python -m perf options ...        (the cell-option costs of perf/options.py)

``run`` times numrnn against PyTorch (when installed) on the same shapes, checks
every case first, prints a table and, with ``--json``, writes every sample
(perf/suite.py says how). ``compare`` exits 1 when a case's ratio to PyTorch fell
by more than the noise of the two runs (perf/compare.py gives the rule).
"""
import argparse
import sys


def _threads(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads must be a comma-separated list of integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--threads must list positive integers, got {text!r}")
    return values


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "options":
        from . import options
        return options.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m perf", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="time numrnn against PyTorch")
    run.add_argument("--quick", action="store_true", help="a small subset with fewer rounds (under 2 minutes)")
    run.add_argument("--json", metavar="OUT", help="write all samples, medians and machine info here")
    run.add_argument("--threads", type=_threads, default=[2, 1], metavar="N,M",
                     help="thread counts to run, in order (default 2,1)")
    run.add_argument("--cases", metavar="PATTERN",
                     help="comma-separated substrings or glob patterns of case names; 'start' and 'memory' "
                          "select the subprocess measurements, 'scaling' the alternating thread-scaling one")
    cmp = sub.add_parser("compare", help="flag cases whose ratio to PyTorch fell beyond the noise")
    cmp.add_argument("base")
    cmp.add_argument("new")
    cmp.add_argument("--z", type=float, default=None, help="noise multiplier (default 3)")
    cmp.add_argument("--floor", type=float, default=None, help="smallest threshold, a fraction (default 0.05)")
    sub.add_parser("options", help="cost of each cell option (python -m perf options --help)")
    args = parser.parse_args(argv)
    if args.command == "compare":
        from . import compare
        return compare.main(args.base, args.new, compare.Z if args.z is None else args.z,
                            compare.FLOOR if args.floor is None else args.floor)
    from . import suite
    result = suite.run(quick=args.quick, json_out=args.json, threads=args.threads, pattern=args.cases)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
