"""Build the isekai._core Cython extensions.

ISEKAI_CYTHON_TRACE=1 compiles with line tracing (profilers, coverage);
ISEKAI_CYTHON_ANNOTATE=1 writes the annotated HTML next to each .pyx.
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

TRACE = os.environ.get("ISEKAI_CYTHON_TRACE") == "1"
ANNOTATE = os.environ.get("ISEKAI_CYTHON_ANNOTATE") == "1"

CORE_MODULES = ["router", "counters", "http", "tunnel", "upstream", "target", "balancer", "cluster", "policy", "tracecontext", "protocol", "iptrie", "families", "ratelimit", "ratelimit_policy"]

macros = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")] if TRACE else []
extensions = [
    Extension(
        f"isekai._core.{name}",
        [f"isekai/_core/{name}.pyx"],
        define_macros=macros,
        extra_compile_args=["-O2"],
    )
    for name in CORE_MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        annotate=ANNOTATE,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "linetrace": TRACE,
            "profile": TRACE,
        },
    ),
)
