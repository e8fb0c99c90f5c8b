"""The version of pyqueue: the one place it is written.

The distribution's metadata (pyproject.toml, `[tool.setuptools.dynamic]`),
`pyqueue.__version__` and `pyqueue --version` all read it from here.
"""
__version__ = "0.1.0"
