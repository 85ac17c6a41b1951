"""Calibration: reading measurements of real clusters (nccl-tests output) and fitting the
communication profile's parameters to them (``moesim calibrate``). Never imported by the engine."""
