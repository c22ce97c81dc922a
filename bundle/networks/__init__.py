from .invariant import DiffeoInvariantNet

__all__ = ["DiffeoInvariantNet"]
