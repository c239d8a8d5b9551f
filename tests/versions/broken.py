"""A version file that does not import (the tests' third case)."""


def mine(x, out):
    pass


raise ImportError("the user's module has a bug on line 6")
