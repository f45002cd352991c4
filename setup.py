"""The one compiled module: everything else about the package is in pyproject.toml.

``pdp/doors/_wire.pyx`` reads a decision request's bytes for the gRPC door. It is optional:
without a C compiler the install still succeeds, and the door parses every request with
protobuf instead (slower, the same answers; see ``pdp/doors/grpc.py``).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("pdp.doors._wire", ["pdp/doors/_wire.pyx"], optional=True)])
