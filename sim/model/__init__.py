"""The transformer's shapes and what follows from them alone: parameter counts."""

from sim.model.params import Shape

__all__ = ["Shape"]
