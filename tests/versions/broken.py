"""A version file that does not import (the tests' third case)."""
import math

from numba import cuda

raise ImportError("the user's module has a bug on line 6")
