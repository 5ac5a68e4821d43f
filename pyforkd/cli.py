"""The ``pyforkd`` command: run a script under a supervising cluster primary.

    pyforkd run SCRIPT [-i N|max] [--policy rr|shared|reuseport] [SCRIPT ARGS...]

The script is what each worker runs: one written for the cluster (its ``cluster.is_worker``
branch runs) or one that only does the worker half (``cluster.listen(...)`` and serve).
"""

from __future__ import annotations

import argparse
import os
import sys

from . import cluster

__all__ = ["main"]


def _instances(text: str) -> int:
    if text == "max":
        return os.cpu_count() or 1
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"-i takes a number or 'max', not {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"-i must be at least 1, not {n}")
    return n


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyforkd",
        description="Run Python programs as a cluster of worker processes.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run SCRIPT in N workers under a supervising primary",
        usage="pyforkd run SCRIPT [-i N|max] [--policy POLICY] [SCRIPT ARGS...] [-- ...]",
        description=(
            "Run SCRIPT in N forked workers under a primary that shares its listening "
            "sockets (cluster.listen) round-robin, restarts workers that die, and stops "
            "them gracefully on SIGTERM or Ctrl-C.  Arguments pyforkd does not know go to "
            "the script, as does everything after --."
        ),
    )
    run.add_argument("script", help="the Python script each worker runs")
    run.add_argument(
        "-i",
        "--instances",
        type=_instances,
        default=1,
        metavar="N|max",
        help="how many workers (max: one per CPU; default 1)",
    )
    run.add_argument(
        "--policy",
        choices=("rr", "shared", "reuseport"),
        default="rr",
        help="rr: the primary hands connections out in turn (default); shared: workers "
        "accept on the listening socket themselves; reuseport: each worker binds its own "
        "SO_REUSEPORT socket",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyforkd`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    theirs: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, theirs = argv[:at], argv[at + 1 :]
    args, extra = _parser().parse_known_args(argv)
    args.args = extra + theirs
    if not os.path.isfile(args.script):
        print(f"pyforkd: no such script: {args.script}", file=sys.stderr)
        return 2
    c = cluster._default
    c.setup_primary(exec=os.path.abspath(args.script), args=list(args.args), policy=args.policy)
    c.on("exit", _report_exit)
    for _ in range(args.instances):
        c.fork()
    print(
        f"pyforkd: {args.instances} worker(s) running {args.script} (pid {os.getpid()})",
        file=sys.stderr,
        flush=True,
    )
    try:
        c.run()
    except RuntimeError as exc:
        print(f"pyforkd: {exc}", file=sys.stderr)
        return 1
    return 0


def _report_exit(worker: cluster.Worker, code: int | None, sig: str | None) -> None:
    if worker.exited_after_disconnect:
        return
    how = f"exit code {code}" if sig is None else sig
    print(f"pyforkd: worker {worker.id} (pid {worker.process.pid}) ended: {how}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
