"""Runs: the run kinds (``kinds``), one scenario simulated (``simulate``), comparisons
(``compare``), sweeps (``sweep``), run directories (``rundir``) and reading them back
(``results``). The engine is imported by each kind, lazily."""

from sim.runs.simulate import simulate

__all__ = ["simulate"]
