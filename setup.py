"""Optional C speed-up of the ring client's round trip (client/cxl_ring/_speedups.c).

Everything else is in pyproject.toml. The extension is built when a C compiler and the Python
headers are there and skipped otherwise (``optional=True``): cxl_ring works without it, in
pure Python. CXL_RING_PURE=1 at build time skips it; at run time it ignores a built one.
"""

import os

from setuptools import Extension, setup

ext_modules = []
if not os.environ.get("CXL_RING_PURE"):
    ext_modules.append(Extension("cxl_ring._speedups", ["client/cxl_ring/_speedups.c"],
                                 extra_compile_args=["-O2", "-Wall"], optional=True))

setup(ext_modules=ext_modules)
