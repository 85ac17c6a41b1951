"""Solvers beside the simulation: expert placement and priority flow admission & routing,
as plain data (JSON in and out), each exact (PuLP ILP) and heuristic (DEAP GA)."""
