from setuptools import setup

setup(
    cffi_modules=["pyllama_q/_ffi_build.py:ffibuilder"],
)
