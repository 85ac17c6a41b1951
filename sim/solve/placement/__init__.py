"""Expert placement: which GPU holds each expert of each MoE layer, as plain data (JSON in and out).

Problem (:class:`PlacementProblem`): L MoE layers of E experts each on P GPUs. The decision is
``assign[l, e]``, the GPU of expert e of layer l (one replica per expert). Constraints: every
expert sits on exactly one GPU; a GPU holds at most ``max_experts_per_gpu`` experts of one layer;
a GPU holds at most ``floor(gpu_memory_bytes / expert_bytes)`` experts over all layers together.

Objective (:func:`cost`, the one definition every solver and test uses). Let ``c(g, h)`` be 0 when
g == h, ``intra_node_cost`` when g and h are different GPUs of one server, ``inter_node_cost``
otherwise (cost per byte, e.g. s/byte = 1 / bandwidth), and ``B = bytes_per_token``:

* ``dispatch   = sum_{l, s, e} source_load[l, s, e] * B * c(s, assign[l, e])``
* ``interlayer = sum_{l < L-1, a, b} coactivation[l, a, b] * B * c(assign[l, a], assign[l+1, b])``
  (ExFlow: a token moves from the GPU of its layer-l expert to that of its layer-l+1 expert)
* ``balance    = balance_weight * sum_l max_g sum_{e: assign[l, e] = g} load[l, e]``
  (the straggler GPU's tokens in each layer)
* ``total      = dispatch + interlayer + balance``

With costs in s/byte the first two terms are link-seconds summed over all tokens (dispatch only;
the combine mirrors it); with ``balance_weight`` in s/token the third is straggler seconds.

Solvers, all returning a :class:`PlacementAnswer`: :func:`solve_ilp` (exact, PuLP + CBC),
:func:`solve_ga` (DEAP, seeded), :func:`greedy` (constructive + swap/move local search) and
:func:`brute_force` (tiny problems, for tests); :func:`block_placement` is the simulator's
default layout as an answer, the baseline to beat. :func:`from_scenario` builds a problem from a
moe-sim training scenario.
"""

from sim.solve.placement.answer import PlacementAnswer, block_placement, check
from sim.solve.placement.brute import BRUTE_FORCE_LIMIT, brute_force
from sim.solve.placement.cost import TERMS, cost
from sim.solve.placement.ga import solve_ga
from sim.solve.placement.greedy import greedy
from sim.solve.placement.ilp import solve_ilp
from sim.solve.placement.problem import PlacementProblem
from sim.solve.placement.scenario import from_scenario

__all__ = ["BRUTE_FORCE_LIMIT", "TERMS", "PlacementAnswer", "PlacementProblem",
           "block_placement", "brute_force", "check", "cost", "from_scenario", "greedy",
           "solve_ga", "solve_ilp"]
