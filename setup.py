"""Build glue: cffi compiles pyforkd._core; the wheel is tagged abi3 where cffi emits it."""

import sys
import sysconfig

from setuptools import setup

# cffi builds against the stable ABI (Py_LIMITED_API) except on debug and free-threaded
# interpreters; the wheel must then carry the abi3 tag for the oldest supported CPython.
options = {}
if (
    sys.implementation.name == "cpython"
    and not sysconfig.get_config_var("Py_GIL_DISABLED")
    and not hasattr(sys, "gettotalrefcount")
):
    options["bdist_wheel"] = {"py_limited_api": "cp39"}

setup(cffi_modules=["pyforkd/_build.py:ffibuilder"], options=options)
