"""Shared test setup. The suite runs in two pytest-xdist worker processes (pyproject.toml); on a GPU, two
processes that each preallocated 75% of its memory would not fit, so JAX allocates on demand here."""

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
