"""The ``pyforkd`` command: run a script or a web app under a cluster primary, talk to it.

    pyforkd run SCRIPT [-i N|max] [--policy rr|shared|reuseport] [options] [SCRIPT ARGS...]
    pyforkd run MODULE:APP [-b ADDRESS]... [--threads N] [options]
    pyforkd status | reload | scale N | stop   [--name NAME]

The script is what each worker runs: one written for the cluster (its ``cluster.is_worker``
branch runs) or one that only does the worker half (``cluster.listen(...)`` and serve).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from . import cluster
from .cluster import control, web

__all__ = ["main"]


def _number(text: str, kind: type, what: str, minimum: float) -> Any:
    """``text`` as an int or a float at least ``minimum`` (else argparse's error)."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"{what} must be at least {minimum}, not {text}")
    return value


def _instances(text: str) -> int:
    if text == "max":
        return os.cpu_count() or 1
    return int(_number(text, int, "a worker count (or max)", 1))


def _seconds(text: str) -> float:
    return float(_number(text, float, "a number of seconds", 0))


def _size(text: str) -> int:
    try:
        return cluster.parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _bind(text: str) -> Any:
    try:
        return web.parse_bind(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _umask(text: str) -> int:
    try:
        value = int(text, 8)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a umask is octal (e.g. 007), not {text!r}") from None
    if not 0 <= value <= 0o777:
        raise argparse.ArgumentTypeError(f"a umask is 000-777, not {text!r}")
    return value


def _count(text: str) -> int:
    return int(_number(text, int, "a count", 0))


_RUN: dict[str, argparse.ArgumentParser] = {}  # the run command's parser, once made


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyforkd",
        description="Run Python programs as a cluster of worker processes, and control them.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run SCRIPT in N workers under a supervising primary",
        usage="pyforkd run SCRIPT [-i N|max] [--policy POLICY] [options] [SCRIPT ARGS...] [-- ...]",
        description=(
            "Run SCRIPT in N workers under a primary that shares its listening sockets "
            "(cluster.listen), restarts workers that die, replaces hung ones, reloads them "
            "with no downtime on SIGHUP or `pyforkd reload`, and stops them gracefully on "
            "SIGTERM (Ctrl-C: at once).  Arguments pyforkd does not know go to the script, "
            "as does everything after --."
        ),
    )
    _RUN["run"] = run
    run.add_argument(
        "script",
        nargs="?",
        metavar="SCRIPT|MODULE:APP",
        help="the Python script each worker runs, or a WSGI/ASGI app to serve (myapp:app); "
        "or the config's app",
    )
    run.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="settings from a TOML file, by the flags' names (default: [tool.pyforkd] of "
        "./pyproject.toml, when it has one); flags given here win",
    )
    run.add_argument(
        "-b",
        "--bind",
        action="append",
        type=_bind,
        metavar="ADDRESS",
        help="with MODULE:APP: where to serve, repeatable: HOST:PORT, [IPv6]:PORT, "
        "unix:PATH or fd://N (default 127.0.0.1:8000)",
    )
    run.add_argument("--factory", action="store_true", help="APP is a function that makes the app")
    run.add_argument(
        "--interface",
        choices=("wsgi", "asgi"),
        help="the app's interface (default: ASGI for a coroutine function, else WSGI)",
    )
    run.add_argument(
        "--threads",
        type=_instances,
        default=1,
        metavar="N",
        help="WSGI: requests served at once by each worker (default 1)",
    )
    run.add_argument(
        "--access-log",
        metavar="-|PATH",
        help="log each request in the combined format, to stdout (-) or a file",
    )
    run.add_argument(
        "--log-file",
        metavar="PATH",
        help="append pyforkd's log and the workers' stderr to PATH (SIGUSR1 reopens it)",
    )
    run.add_argument(
        "--umask",
        type=_umask,
        metavar="OCTAL",
        help="the umask of the UNIX sockets the primary makes (e.g. 007)",
    )
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
        default=cluster.DEFAULTS["policy"],
        help="rr: the primary hands connections out (default; on Windows shared is); "
        "shared: workers accept on the listening socket themselves; reuseport: each "
        "worker binds its own SO_REUSEPORT socket",
    )
    run.add_argument(
        "--balance",
        choices=("round-robin", "least-connections"),
        default="round-robin",
        help="how rr picks a worker: in turn (default), or the one with fewest open connections",
    )
    run.add_argument(
        "--start",
        choices=("fork", "spawn"),
        default=cluster.DEFAULTS["start"],
        help="fork the primary (default: imports are warm) or spawn a fresh interpreter "
        "(Windows: the only way)",
    )
    run.add_argument(
        "--name",
        help="the cluster's name for status/reload/scale/stop (default: the script's)",
    )
    run.add_argument(
        "--timeout",
        type=_seconds,
        default=0,
        metavar="S",
        help="MODULE:APP: answer 503 to a request running longer and replace its worker; "
        "SCRIPT: kill and replace a worker busy with one connection for longer (0: never; "
        "the default)",
    )
    run.add_argument(
        "--ready-timeout",
        type=_seconds,
        default=30,
        metavar="S",
        help="kill a worker that has not listened (or called cluster.ready() with "
        "--wait-ready) after S seconds; 0: wait for ever (default 30)",
    )
    run.add_argument(
        "--wait-ready",
        action="store_true",
        help="a worker is ready when it calls cluster.ready(), not when it listens",
    )
    run.add_argument(
        "--max-memory",
        type=_size,
        metavar="SIZE",
        help="replace a worker whose resident memory passes SIZE (e.g. 300M, 1G)",
    )
    run.add_argument(
        "--max-requests",
        type=_count,
        default=0,
        metavar="N",
        help="replace a worker after it took N connections (0: never; the default)",
    )
    run.add_argument(
        "--max-requests-jitter",
        type=_count,
        default=0,
        metavar="N",
        help="add a random 0..N to each worker's --max-requests (workers do not all go at once)",
    )
    run.add_argument(
        "--graceful-timeout",
        type=_seconds,
        default=10,
        metavar="S",
        help="how long a stopping or replaced worker may finish its connections (default 10)",
    )
    run.add_argument(
        "--max-restarts",
        type=_count,
        default=10,
        metavar="N",
        help="stop the cluster after N restarts in a row of workers that died young (default 10)",
    )
    run.add_argument(
        "--restart-delay",
        type=_seconds,
        default=0.1,
        metavar="S",
        help="the delay before restarting a worker that died young, after the first "
        "(grows x1.5 each time, up to 15 s; default 0.1)",
    )
    run.add_argument(
        "--no-log-prefix",
        action="store_true",
        help="leave workers' output as it is (default: each line starts with [worker N])",
    )
    for name, text in (
        ("status", "a table of the workers of a running cluster"),
        ("reload", "replace every worker, refusing no connection"),
        ("scale", "run N workers"),
        ("stop", "stop a running cluster gracefully"),
    ):
        sub = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        if name == "scale":
            sub.add_argument("n", type=_instances, metavar="N|max", help="how many workers")
        if name == "status":
            sub.add_argument(
                "--json",
                action="store_true",
                help="print JSON, not a table (several clusters: a list)",
            )
        if name == "stop":
            sub.add_argument("--fast", action="store_true", help="SIGTERM the workers now")
        sub.add_argument("--name", help="which cluster (needed when several run)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyforkd`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    theirs: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, theirs = argv[:at], argv[at + 1 :]
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if args.command != "run":
        if extra or theirs:
            parser.error(f"unrecognized arguments: {' '.join(extra + theirs)}")
        return _talk(args)
    try:
        settings, where = _read_config(args.config)
        if settings:
            _apply_config(_RUN["run"], settings, where)
            flags = args
            args, extra = parser.parse_known_args(argv)  # (the flags win over the file)
            if flags.bind is not None:
                args.bind = flags.bind  # (argparse would add them to the file's)
    except (OSError, ValueError) as exc:
        print(f"pyforkd: {exc}", file=sys.stderr)
        return 2
    if args.script is None:
        parser.error("run needs a SCRIPT or MODULE:APP (or app = ... in the config)")
    args.args = extra + theirs
    c = cluster.default()
    is_app = not os.path.isfile(args.script) and ":" in args.script
    if is_app:
        try:
            exec_, script_args, name = _app_plan(c, args)
        except (ImportError, AttributeError, TypeError, ValueError, OSError) as exc:
            print(f"pyforkd: {exc}", file=sys.stderr)
            return 2
    elif not os.path.isfile(args.script):
        print(f"pyforkd: no such script: {args.script}", file=sys.stderr)
        return 2
    else:
        if args.bind or args.factory or args.interface:
            print("pyforkd: -b, --factory and --interface are for MODULE:APP", file=sys.stderr)
            return 2
        exec_, script_args = os.path.abspath(args.script), list(args.args)
        name = os.path.splitext(os.path.basename(args.script))[0]
    name = args.name or name
    try:
        _setup(c, args, exec_, script_args)
    except OSError as exc:
        print(f"pyforkd: {args.log_file}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        server = control.ControlServer(c, name, cluster.say)
    except (control.ControlError, ValueError, OSError) as exc:
        print(f"pyforkd: {exc}", file=sys.stderr)
        return 2
    try:
        c.on("exit", _report_exit)
        for _ in range(args.instances):
            c.fork()
        server.start()  # (after the forks: the primary forks with no thread of its own)
        cluster.say(
            f"{args.instances} worker(s) running {args.script} as {name!r} "
            f"(pid {os.getpid()}; `pyforkd status --name {name}`)"
        )
        try:
            c.run()
        except RuntimeError as exc:
            cluster.say(str(exc))
            return 1
    finally:
        server.close()
    return 0


def _read_config(path: str | None) -> tuple[dict[str, Any], str]:
    """The settings of ``path`` (TOML), or of ``[tool.pyforkd]`` in ./pyproject.toml."""
    explicit = path is not None
    where = "pyproject.toml" if path is None else path
    if not explicit:
        try:
            with open(where, encoding="utf-8", errors="replace") as f:
                if "[tool.pyforkd" not in f.read():
                    return {}, where  # (a project's file without a word for pyforkd)
        except (FileNotFoundError, IsADirectoryError):
            return {}, where
    try:
        import tomllib as toml  # noqa: PLC0415  (3.11+; tomli before, only when needed)
    except ImportError:
        try:
            import tomli as toml  # type: ignore[import-not-found, no-redef, unused-ignore]  # noqa: PLC0415
        except ImportError:
            raise ValueError(
                f"{where}: reading TOML needs Python 3.11+ or 'pip install tomli'"
            ) from None
    try:
        with open(where, "rb") as f:
            data = toml.load(f)
    except toml.TOMLDecodeError as exc:
        raise ValueError(f"{where}: not TOML: {exc}") from None
    if not explicit:
        data = data.get("tool", {}).get("pyforkd", {})
    elif "tool" in data and "pyforkd" in data["tool"]:
        data = data["tool"]["pyforkd"]  # (a pyproject.toml given with -c)
    if not isinstance(data, dict):
        raise ValueError(f"{where}: the settings are a table")
    return data, where


def _apply_config(run: argparse.ArgumentParser, settings: dict[str, Any], where: str) -> None:
    """The config's settings as the run command's defaults, checked as its flags are.

    (argparse has no public list of a parser's actions, nor names for their kinds: its
    ``_actions`` and action classes are read here.)
    """
    actions = {a.dest: a for a in run._actions}
    defaults: dict[str, Any] = {}
    for key, value in settings.items():
        dest = "script" if key in ("app", "script") else key.replace("-", "_")
        action = actions.get(dest)
        if action is None or dest in ("help", "config"):
            raise ValueError(f"{where}: unknown setting {key!r} (the settings are run's flags)")
        try:
            if isinstance(action, argparse._StoreTrueAction):
                if not isinstance(value, bool):
                    raise argparse.ArgumentTypeError(f"true or false, not {value!r}")
                defaults[dest] = value
                continue
            convert = action.type or str
            items = value if isinstance(value, list) else [value]
            if not isinstance(action, argparse._AppendAction) and isinstance(value, list):
                raise argparse.ArgumentTypeError("one value, not a list")
            converted = [convert(str(v)) for v in items]  # type: ignore[operator]
            if action.choices is not None and any(v not in action.choices for v in converted):
                raise argparse.ArgumentTypeError(f"one of {', '.join(action.choices)}")
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise ValueError(f"{where}: {key} = {value!r}: {exc}") from None
        appended = isinstance(action, argparse._AppendAction)
        defaults[dest] = converted if appended else converted[0]
    run.set_defaults(**defaults)


def _setup(
    c: cluster.Cluster, args: argparse.Namespace, exec_: str, script_args: list[str]
) -> None:
    """The cluster's settings from the command line (``OSError``: the log file)."""
    c.setup_primary(
        exec=exec_,
        args=script_args,
        umask=args.umask,
        log_file=args.log_file,
        policy=args.policy,
        balance=args.balance,
        start=args.start,
        timeout=args.timeout or None,
        ready_timeout=args.ready_timeout or None,
        wait_ready=args.wait_ready,
        max_memory=args.max_memory,
        max_requests=args.max_requests or None,
        max_requests_jitter=args.max_requests_jitter,
        graceful_timeout=args.graceful_timeout or 0.001,
        max_restarts=args.max_restarts,
        restart_delay=args.restart_delay,
        log_prefix=not args.no_log_prefix,
    )


def _app_plan(c: cluster.Cluster, args: argparse.Namespace) -> tuple[str, list[str], str]:
    """``pyforkd run MODULE:APP``: what each worker runs, its arguments, the name.

    The app is imported here once, so that a wrong name fails before any worker starts.
    """
    if args.args:
        raise ValueError(f"unrecognized arguments: {' '.join(args.args)}")
    kind = web.interface(web.load(args.script, args.factory), args.interface)
    binds = [
        c.adopt(web.adopt_fd(b[1])) if isinstance(b, tuple) and b[0] == "fd" else b
        for b in args.bind or [web.parse_bind(web.DEFAULT_BIND)]
    ]
    plan = web.plan(
        args.script,
        binds,
        factory=args.factory,
        kind=kind,
        threads=args.threads,
        access_log=args.access_log,
    )
    return web.RUNNER, [plan], args.script.partition(":")[0].rpartition(".")[2]


def _talk(args: argparse.Namespace) -> int:
    """One request (status, reload, scale, stop) to the running primary."""
    req: dict[str, Any] = {"cmd": args.command}
    if args.command == "scale":
        req["n"] = args.n
    if args.command == "stop":
        req["fast"] = args.fast
    if args.command == "status" and args.name is None:
        return _status_of_all(args.json)
    try:
        answer = control.request(args.name, req)
    except (control.ControlError, ValueError) as exc:
        print(f"pyforkd {args.command}: {exc}", file=sys.stderr)
        return 1
    if args.command == "status":
        if args.json:
            print(json.dumps(answer, indent=2))
        else:
            print(_table(answer))
    return 0


def _status_of_all(as_json: bool) -> int:
    """``pyforkd status`` without ``--name``: every cluster of this user, one after another."""
    names = control.running()
    if not names:
        print("pyforkd status: no cluster is running", file=sys.stderr)
        return 1
    answers, failed = [], 0
    for name in names:
        try:
            answers.append(control.request(name, {"cmd": "status"}))
        except (control.ControlError, ValueError) as exc:
            failed += 1
            print(f"pyforkd status: {exc}", file=sys.stderr)
    if as_json:  # (one cluster: its answer, as with --name; several: a list of them)
        print(json.dumps(answers[0] if len(names) == 1 and answers else answers, indent=2))
    else:
        print("\n\n".join(_table(a) for a in answers))
    return 1 if failed else 0


def _table(answer: dict[str, Any]) -> str:
    head = ("ID", "PID", "STATE", "UPTIME", "RESTARTS", "SERVED", "OPEN", "CPU%", "RSS")
    rows = [head]
    for w in answer["workers"]:
        state = w["state"] + ("" if w["ready"] or w["state"] == "dead" else " (not ready)")
        rows.append(
            (
                str(w["id"]),
                str(w["pid"]),
                state,
                _duration(w["uptime"]),
                str(w["restarts"]),
                str(w["served"]),
                str(w["open"]),
                "-" if w["cpu"] is None else f"{w['cpu']:.1f}",
                "-" if w["rss"] is None else f"{w['rss'] / (1 << 20):.1f}M",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        f"{answer['name']} (pid {answer['pid']}, policy {answer['policy']}): "
        f"{len(answer['workers'])} worker(s)"
    ]
    for r in rows:
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


def _report_exit(worker: cluster.Worker, code: int | None, sig: str | None) -> None:
    if worker.exited_after_disconnect:
        return
    how = f"exit code {code}" if sig is None else sig
    cluster.say(f"worker {worker.id} (pid {worker.process.pid}) ended: {how}")


if __name__ == "__main__":
    sys.exit(main())
