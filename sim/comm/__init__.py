"""The communication model: profiles of what a collective library (NCCL) adds around the flows
(``sim.comm.profile``), and its choice of algorithm and protocol with their costs
(``sim.comm.model``, imported on its own: it needs the network)."""

from sim.comm.profile import IDEAL, PROTOCOLS, CommProfile, load_profile

__all__ = ["IDEAL", "PROTOCOLS", "CommProfile", "load_profile"]
