"""CPython's own ``test_concurrent_futures``, run against :class:`pyforkd.Pool`.

The suite is taken from where it is installed, never copied: the interpreter's ``test``
package when it has the module, else Debian's ``libpython3.11-testsuite``
(``/usr/lib/python3.11/test``, which ``.ci/run`` installs).  This adapter maps
``ProcessPoolExecutor``'s constructor onto ``Pool`` and puts it in the suite's process
pool mixins (fork, forkserver, spawn).  It runs only the process pool's classes (the
thread pool and ``Future`` are the stdlib's own) and deselects, each with its reason,
the tests that read ``ProcessPoolExecutor``'s private attributes and those where pyforkd
differs on purpose.

    python tests/cpython/concurrent_futures.py [-v] [-k PATTERN]

Exit status 0 when everything selected passed; the last line counts them.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib
import os
import sys
import unittest

import pyforkd

DEBIAN = "/usr/lib/python3.11/test"

PRIVATE = "reads ProcessPoolExecutor's private attributes"
FRESH = (
    "runs its scenario in a fresh interpreter (-I) that imports the executor by name from "
    "concurrent.futures, so it would test the stdlib's; tests/test_pool.py has the same "
    "scenario for Pool"
)
# Tests left out (".name": in every class; "Class.name"), each with its reason.
DESELECTED: dict[str, str] = {
    ".test_killed_child": f"{PRIVATE} (_processes)",
    ".test_saturation": f"{PRIVATE} (_max_workers, _processes)",
    ".test_idle_process_reuse_one": f"{PRIVATE} (_max_workers, _processes)",
    ".test_idle_process_reuse_multiple": f"{PRIVATE} (_max_workers, _processes)",
    ".test_max_tasks_per_child_defaults_to_spawn_context": f"{PRIVATE} (_mp_context)",
    ".test_processes_terminate": f"{PRIVATE} (_processes)",
    ".test_context_manager_shutdown": f"{PRIVATE} (_processes)",
    ".test_del_shutdown": f"{PRIVATE} (_executor_manager_thread, _processes)",
    ".test_shutdown_no_wait": f"{PRIVATE} (_executor_manager_thread, _processes)",
    ".test_shutdown_deadlock_pickle": f"{PRIVATE} (_executor_manager_thread)",
    ".test_traceback": (
        "asserts the cause's type is concurrent.futures.process._RemoteTraceback, a private "
        "class (Pool attaches the remote traceback as __cause__ too: tests/test_pool.py)"
    ),
    ".test_max_tasks_per_child": (
        f"{PRIVATE} (_processes) under spawn and forkserver; under fork it expects a "
        "ValueError, where Pool runs max_tasks_per_worker with fork on purpose (a "
        "replacement comes from a zygote forked before the pool's threads start); "
        "tests/test_pool.py checks the replacement"
    ),
    ".test_python_finalization_error": (
        "mocks threading's private _start_joinable_thread so that the executor's second "
        "internal thread fails to start: it counts ProcessPoolExecutor's threads (Pool "
        "starts one reader per worker, in its constructor, which then raises)"
    ),
    ".test_interpreter_shutdown": FRESH,
    ".test_submit_after_interpreter_shutdown": FRESH,
    ".test_hang_gh83386": FRESH,
}


class PoolAsProcessPoolExecutor(pyforkd.Pool):
    """``Pool`` behind ``ProcessPoolExecutor``'s constructor."""

    def __init__(
        self,
        max_workers=None,
        mp_context=None,
        initializer=None,
        initargs=(),
        *,
        max_tasks_per_child=None,
    ):
        start = None if mp_context is None else mp_context.get_start_method()
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        super().__init__(
            max_workers,
            start=start,
            initializer=initializer,
            initargs=initargs,
            max_tasks_per_worker=max_tasks_per_child,
        )


def _use_debian_suite() -> None:
    """Put Debian's test directory behind the interpreter's ``test`` package when it lacks
    the module (at import: spawn and forkserver workers re-import this file)."""
    import test

    mine = os.path.join(test.__path__[0], "test_concurrent_futures")
    if os.path.exists(mine) or os.path.exists(mine + ".py"):
        return
    if sys.version_info[:2] == (3, 11) and os.path.isdir(DEBIAN) and DEBIAN not in test.__path__:
        test.__path__.append(DEBIAN)


_use_debian_suite()


def load_suite_module():
    """``test.test_concurrent_futures``: the interpreter's, else Debian's for 3.11."""
    try:
        return importlib.import_module("test.test_concurrent_futures")
    except ImportError as exc:
        raise SystemExit(
            f"no test_concurrent_futures for Python {sys.version_info[:2]} ({exc}); on "
            "3.11: apt-get install libpython3.11-testsuite"
        ) from None


def process_pool_tests(module) -> list[unittest.TestCase]:
    """Every test of the suite's process pool classes (3.11's module, 3.12+'s package)."""
    modules = [module]
    if hasattr(module, "__path__"):  # 3.12+: a package of modules
        for name in sorted(os.listdir(module.__path__[0])):
            if name.startswith("test_") and name.endswith(".py"):
                modules.append(importlib.import_module(f"{module.__name__}.{name[:-3]}"))
        util = importlib.import_module(f"{module.__name__}.util")
        mixins = [
            util.ProcessPoolForkMixin,
            util.ProcessPoolForkserverMixin,
            util.ProcessPoolSpawnMixin,
        ]
    else:
        mixins = [
            module.ProcessPoolForkMixin,
            module.ProcessPoolForkserverMixin,
            module.ProcessPoolSpawnMixin,
        ]
    for mixin in mixins:
        mixin.executor_type = PoolAsProcessPoolExecutor
    tests = []
    loader = unittest.TestLoader()
    for mod in modules:
        for name in dir(mod):
            cls = getattr(mod, name)
            if (
                isinstance(cls, type)
                and issubclass(cls, unittest.TestCase)
                and "ProcessPool" in name
                and any(issubclass(cls, m) for m in mixins)
            ):
                tests.extend(loader.loadTestsFromTestCase(cls))
    return tests


def why_deselected(test: unittest.TestCase) -> str | None:
    name = test._testMethodName
    return DESELECTED.get(f"{type(test).__name__}.{name}") or DESELECTED.get(f".{name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("-k", dest="pattern", default=None, help="run tests whose id has this")
    parser.add_argument("--list-deselected", action="store_true", help="print them and why")
    opts = parser.parse_args()
    module = load_suite_module()
    # Code in the suite that names ProcessPoolExecutor directly gets the pool too.
    concurrent.futures.ProcessPoolExecutor = PoolAsProcessPoolExecutor
    selected, skipped = [], []
    for test in process_pool_tests(module):
        if opts.pattern and opts.pattern not in test.id():
            continue
        why = why_deselected(test)
        (skipped if why else selected).append(test)
    if opts.list_deselected:
        for test in skipped:
            print(f"{test.id()}: {why_deselected(test)}")
    runner = unittest.TextTestRunner(verbosity=2 if opts.verbose else 1, stream=sys.stdout)
    result = runner.run(unittest.TestSuite(selected))
    passed = result.testsRun - len(result.failures) - len(result.errors) - len(result.skipped)
    print(
        f"test_concurrent_futures against pyforkd.Pool ({module.__file__}): "
        f"{passed} passed, {len(result.failures) + len(result.errors)} failed, "
        f"{len(result.skipped)} skipped by the suite, {len(skipped)} deselected"
    )
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
