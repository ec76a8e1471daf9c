"""Build glue for the one thing pyproject.toml cannot say: the cffi extension in ggml_ext/ (see build_ffi.py)."""

from setuptools import setup

setup(cffi_modules=["ggml_ext/build_ffi.py:ffibuilder"])
