from .invariant import DiffeoInvariantNet
from .mapping import DiffeoMappingNet

__all__ = ["DiffeoInvariantNet", "DiffeoMappingNet"]
