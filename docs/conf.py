"""Sphinx configuration: ``python3 -m sphinx -W -b html docs build/docs``."""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

project = "pyforkd"
author = "the pyforkd developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
html_theme = "alabaster"
# Links to files of the repository (tests, examples, BENCHMARKS.md) are paths there,
# not pages of this site.
suppress_warnings = ["myst.xref_missing"]
