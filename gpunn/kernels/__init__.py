"""``gpunn.kernels`` in a source checkout: the repository's top-level ``kernels/`` folder.

The kernel families live in ``kernels/`` at the top of the repository; an installed gpunn
has them as this package (``pyproject.toml`` maps the folder to ``gpunn.kernels``, and
this file is not installed).  Run from a checkout, Python finds the checkout's own
``gpunn/`` first, so without this file ``import gpunn.kernels`` would fail there, or fall
back to numpy with a wrong reason, whether gpunn is installed editable, non-editable or
not at all.  This file makes the package's path that folder and runs its ``__init__``:
one source for every kernel, imported the same way everywhere.
"""
from pathlib import Path as _Path

__path__ = [str(_Path(__file__).resolve().parents[2] / "kernels")]
_init = _Path(__path__[0]) / "__init__.py"
exec(compile(_init.read_text(encoding="utf-8"), str(_init), "exec"))  # FAMILIES and the package's names
del _Path, _init
