"""Priority flow admission and routing (PFAR): which flows to admit, and on which path.

A reconstruction of López, Labonne, Poletti, Belabed (arXiv 2009.10822, 2020); the paper's body
could not be read, so the model below is the standard admission ILP (papers.md section 5, [U]).

Problem (:class:`Problem`): directed arcs with capacities, flows ``(src, dst, demand, priority)``
in one consistent rate unit (Gbit/s in :func:`generate`, bytes/s in :func:`from_cluster`). Each
flow may use one of its ``k_paths`` shortest simple paths by hop count (networkx, computed once
per problem and cached), or be rejected. Routes are unsplittable; the admitted demand on every
arc must fit its capacity. Nodes listed in ``endpoint_only`` (GPUs) never forward traffic.

Objective: maximise the sum of ``w(priority)`` over admitted flows, where ``weighting`` is

* ``"linear"``: ``w(pi) = pi``;
* ``"strict"``: ``w(pi) = W**pi`` with ``W = len(flows) + 1``, so one flow of priority p outweighs
  all flows of lower priority together (lexicographic). :func:`solve_ilp` solves this exactly as
  a sequence of ILPs, one per priority level from the highest (maximise the admitted count of
  that level with the higher levels' optimal counts fixed), because coefficients up to W**5 are
  beyond double precision in one ILP. Objectives are summed as exact integers, then reported as
  floats.

Solvers, all returning an :class:`Answer` that :func:`check` accepts: :func:`solve_ilp` (path-form
ILP, PuLP with CBC or HiGHS), :func:`solve_ga` (DEAP GA, seeded, repair-decoded, with a local
search on new best individuals) and :func:`greedy`. :func:`generate` draws congested random
instances; :func:`from_cluster` builds one from a moe-sim cluster and an All-to-All matrix.
"""

from sim.solve.pfar.answer import Answer, check
from sim.solve.pfar.ga import solve_ga
from sim.solve.pfar.ilp import solve_ilp
from sim.solve.pfar.instances import from_cluster, generate
from sim.solve.pfar.problem import CHECK_RTOL, STATUSES, WEIGHTINGS, Flow, Problem
from sim.solve.pfar.repair import greedy

__all__ = ["CHECK_RTOL", "STATUSES", "WEIGHTINGS", "Answer", "Flow", "Problem", "check",
           "from_cluster", "generate", "greedy", "solve_ga", "solve_ilp"]
