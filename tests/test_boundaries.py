"""The package's module boundaries, read from its source (DESIGN.md, "one module per concept").

- No module reads another module's underscore names: neither ``from .x import _name``, nor
  ``x._name`` on an imported pyforkd module, nor ``obj._name`` where no class or function
  of the reading module defines ``_name``.
- Only ``_bindings`` touches cffi's ``ffi``/``lib`` (``_build`` describes the library).

Names that modules share have no underscore and stay out of ``__all__`` (so out of the
docs): ``channel.offer_rings``, ``child_process.launch``, ``ring.RingParts``.  KNOWN would
list a crossing let pass; it is empty, and the test fails on any new one.
"""

from __future__ import annotations

import ast
import pathlib

import pyforkd

# The package being tested: the source tree's, or an installed wheel's (its .py files).
PACKAGE = pathlib.Path(pyforkd.__file__).resolve().parent

# (module, name): crossings let pass, each read from the module in its comment.  None is
# left: a name that modules share has no underscore and stays out of ``__all__``.
KNOWN: set[tuple[str, str]] = set()


def _modules(root: pathlib.Path = PACKAGE) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined_here(tree: ast.Module) -> set[str]:
    """Every underscore name the module defines: functions, classes, attributes, globals."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            names.add(node.attr)  # (a write on another object defines nothing here)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.add(node.value)  # (__slots__ entries)
    return {n for n in names if _private(n)}


def _package_modules(tree: ast.Module) -> set[str]:
    """The local names bound to pyforkd modules (``from . import x as _x``)."""
    bound = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0 and node.module in (None, ""):
            bound.update(a.asname or a.name for a in node.names)
    return bound


def crossings(root: pathlib.Path = PACKAGE) -> set[tuple[str, str]]:
    found = set()
    for path in _modules(root):
        module = str(path.relative_to(root))
        tree = ast.parse(path.read_text(encoding="utf-8"))
        own = _defined_here(tree)
        mods = _package_modules(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                for alias in node.names:
                    # (a private module is the package's own: importing it is fine)
                    base = path.parent
                    for _ in range(node.level - 1):
                        base = base.parent
                    where = base / (node.module or "").replace(".", "/")
                    is_module = (where / f"{alias.name}.py").exists()
                    if _private(alias.name) and not is_module:
                        found.add((module, alias.name))
            elif isinstance(node, ast.Attribute) and _private(node.attr):
                base = node.value
                if isinstance(base, ast.Name) and base.id in ("self", "cls"):
                    continue
                if (isinstance(base, ast.Name) and base.id in mods) or node.attr not in own:
                    found.add((module, node.attr))
    return {(m, n) for m, n in found if not _stdlib_private(n)}


def _stdlib_private(name: str) -> bool:
    # The standard library's own, used knowingly: os._exit, argparse's action classes,
    # atexit's hooks and multiprocessing's fork hooks and child list in a worker,
    # namedtuple's _fields, socket's _accept.  Not a pyforkd boundary.
    return name in {"_exit", "_AppendAction", "_StoreTrueAction", "_actions", "_clear",
                    "_run_exitfuncs", "_fields", "_accept", "_finalizer_registry",
                    "_run_after_forkers", "_children"}  # fmt: skip


def test_no_module_reads_another_modules_private_names():
    found = crossings()
    new = sorted(found - KNOWN)
    gone = sorted(KNOWN - found)
    assert not new, f"new reads of another module's private names: {new}"
    assert not gone, f"listed in KNOWN but no longer there (take them out): {gone}"


def test_only_bindings_touches_cffi():
    for path in _modules():
        if path.name in ("_bindings.py", "_build.py"):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names = {a.name for a in node.names}
                assert "_core" not in (node.module or "") and "_core" not in names, path
                assert not {"ffi", "lib"} & names, f"{path.name} imports ffi/lib"
            if isinstance(node, ast.Import):
                assert not any("cffi" in a.name or "_core" in a.name for a in node.names), path


def test_the_check_sees_each_kind_of_crossing(tmp_path):
    (tmp_path / "a.py").write_text("_hidden = 1\nclass A:\n    def _own(self): pass\n")
    (tmp_path / "_priv.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text(
        "from . import a as _a\nfrom . import _priv\nfrom .a import _hidden\n"
        "def f(obj):\n    obj._own()\n    return _a._hidden, _priv.x\n"
        "class B:\n    def _mine(self, other):\n        return other._mine\n"
        "def g(obj):\n    obj._set = 1\n"
    )
    assert crossings(tmp_path) == {("b.py", "_hidden"), ("b.py", "_own"), ("b.py", "_set")}
