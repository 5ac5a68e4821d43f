"""What a worker of ``pyforkd run MODULE:APP`` runs: ``sys.argv[1]`` holds its settings."""

import os
import sys

# The cluster put this file's directory first on sys.path, as for any script: here it
# would make pyforkd's modules importable by their bare names.  The app's directory is
# the current one.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
sys.path.insert(0, os.getcwd())

from pyforkd.cluster import web  # noqa: E402  (after the path is right)

web.worker(sys.argv[1])
