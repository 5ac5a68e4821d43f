"""Run every fuzzer here for a bounded time: ``python tests/fuzz/run.py [SECONDS]``.

Each starts from its seed corpus (corpus/NAME, copied: a run adds nothing to the repo),
for SECONDS (default ``$PYFORKD_FUZZ_SECONDS``, else 15), with a hang limit of 1 s per
input.  A crash, a hang, a leaked descriptor or an uncaught exception fails the run; the
input that did it is kept in build/fuzz-artifacts/.  The last line says how many inputs
each fuzzer tried.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FUZZERS = ("frames", "node", "control", "ring", "json")


def run(name: str, seconds: int, artifacts: str) -> tuple[bool, int, str]:
    with tempfile.TemporaryDirectory(prefix=f"pyforkd-fuzz-{name}-") as work:
        shutil.copytree(os.path.join(HERE, "corpus", name), work, dirs_exist_ok=True)
        done = subprocess.run(
            [
                sys.executable,
                os.path.join(HERE, f"fuzz_{name}.py"),
                work,
                f"-max_total_time={seconds}",
                "-timeout=1",
                "-rss_limit_mb=3072",
                f"-artifact_prefix={artifacts}/{name}-",
                "-print_final_stats=1",
            ],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=False,
        )
    log = done.stderr
    runs = re.findall(r"Done (\d+) runs", log)
    return done.returncode == 0, int(runs[-1]) if runs else 0, log


def main() -> int:
    seconds = int(
        sys.argv[1] if len(sys.argv) > 1 else os.environ.get("PYFORKD_FUZZ_SECONDS", "15")
    )
    artifacts = os.path.join(ROOT, "build", "fuzz-artifacts")
    os.makedirs(artifacts, exist_ok=True)
    failed, counts = [], []
    for name in FUZZERS:
        ok, runs, log = run(name, seconds, artifacts)
        counts.append(f"{name} {runs}")
        print(f"fuzz_{name}: {'ok' if ok else 'FAILED'}, {runs} inputs in {seconds} s", flush=True)
        if not ok:
            failed.append(name)
            print(log[-6000:], file=sys.stderr)
    print(f"fuzzed: {', '.join(counts)} inputs; {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
