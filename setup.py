"""Build of the optional C extension (everything else is in pyproject.toml).

``meanshift_gpu._neighbors._native`` holds the compiled CPU loops (row-sum step, merge,
labels).  It is built at install time so that no fit ever compiles code; where
no C compiler is found the install still succeeds and those steps run in
torch (``meanshift_gpu._neighbors.compiled.unavailable()`` says why).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "meanshift_gpu._neighbors._native",
            sources=["meanshift_gpu/_neighbors/_native.c"],
            depends=["meanshift_gpu/_neighbors/_native_rowsum.h"],
            # No FMA contraction: the band test must round as the torch formula does.
            extra_compile_args=["-O3", "-std=c11", "-ffp-contract=off", "-fno-math-errno", "-pthread"],
            extra_link_args=["-pthread"],
            optional=True,
        )
    ]
)
