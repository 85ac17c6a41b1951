"""The exact solver: a MILP in PuLP + CBC with Glover's linearisation of the inter-layer term."""

from __future__ import annotations

import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pulp

from sim.errors import UserError
from sim.solve.placement.answer import PlacementAnswer, _answer
from sim.solve.placement.cost import _check_assign, _Tables, _tables, _violation, cost
from sim.solve.placement.greedy import greedy
from sim.solve.placement.problem import PlacementProblem


def solve_ilp(problem: PlacementProblem, time_limit_s: float | None = None, msg: bool = False,
              threads: int | None = None, warm_start: bool | np.ndarray = True
              ) -> PlacementAnswer:
    """Exact MILP with CBC, warm-started from :func:`greedy` (``warm_start=True``), from a
    given feasible (L, E) assignment (e.g. a GA answer's ``assign``), or not at all (False).

    Variables: ``x[l, e, g]`` binary (expert e of layer l on GPU g); ``m[l]`` >= the tokens of
    every GPU in layer l (the straggler); ``y[l, a, g]`` tokens of a (layer l) whose layer-l+1
    expert is on a's GPU g, and ``z[l, a, n]`` the same per server n. Glover's linearisation of
    ``x[l, a, g] * sum_b coact[l, a, b] x[l+1, b, g]``: ``y <= sum_b coact x[l+1, b, g]`` and
    ``y <= U * x[l, a, g]`` with U the sum of a's min(K, memory slots) largest coactivations
    (both maximised, so exact at integer x); z alike with the server's GPUs summed. Objective:
    ``sum D[l, e, g] x + w * sum m + B * (inter * sum coact - intra * sum y - (inter - intra)
    * sum z)``, i.e. exactly :func:`cost`; the constant is kept out of CBC and the rest scaled
    to about 1e4. ``status`` is "optimal" only when CBC proved it (its solution status is
    LpSolutionOptimal and its log says "Optimal solution found"; PuLP's ``prob.status`` says
    Optimal also after a time limit); else "feasible" with CBC's lower bound and gap.
    """
    t0 = time.perf_counter()
    p = problem
    t = _tables(p)
    if isinstance(warm_start, bool):
        start = greedy(p).assign if warm_start else None
    else:
        start = _check_assign(p, warm_start, "solve_ilp: warm_start")
        if _violation(p, start):
            raise UserError(f"solve_ilp: warm_start: infeasible: {_violation(p, start)}")
    model = _IlpModel(p, t, start)
    with tempfile.TemporaryDirectory() as tmp:
        log_path = str(Path(tmp) / "cbc.log")
        with warnings.catch_warnings():  # PuLP 3.3 announces PULP_CBC_CMD's removal in 4.0
            warnings.simplefilter("ignore", DeprecationWarning)
            solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s,
                                       warmStart=start is not None, logPath=log_path,
                                       threads=threads)
        t1 = time.perf_counter()
        model.prob.solve(solver)
        solve_s = time.perf_counter() - t1
        log = Path(log_path).read_text(errors="replace") if Path(log_path).exists() else ""
    if msg:
        print(log)
    a = model.assignment()
    found = a is not None and _violation(p, a) is None
    if not found:
        if start is None:
            raise UserError("solve_ilp: CBC found no placement in the time limit; give more "
                            "time or warm_start=True")
        a = start
    result = _cbc_log(log)
    proven = found and model.prob.sol_status == pulp.LpSolutionOptimal
    if result.get("result") is not None:
        proven = proven and result["result"].startswith("Optimal")
    elif time_limit_s is not None:
        proven = proven and solve_s < time_limit_s
    total = cost(p, a)["total"]
    info = {**model.size, "solve_s": solve_s, "cbc_result": result.get("result")}
    if result.get("objective") is not None:
        info["cbc_objective"] = float(result["objective"] * model.scale + model.const)
    if proven:
        return _answer(p, a, "ilp", t0, "optimal", total, 0.0, info)
    bound = gap = None
    if result.get("lower_bound") is not None:
        bound = min(result["lower_bound"] * model.scale + model.const, total)
        gap = (total - bound) / abs(total) if total else 0.0
    return _answer(p, a, "ilp", t0, "feasible", bound, gap, info)


def _cbc_log(text: str) -> dict:
    """Result line, objective, lower bound and gap from CBC's final report (None if absent)."""
    out: dict = {}
    for key, pattern in (("result", r"^Result - (.+)$"),
                         ("objective", r"^Objective value:\s+(\S+)"),
                         ("lower_bound", r"^Lower bound:\s+(\S+)"), ("gap", r"^Gap:\s+(\S+)")):
        m = re.search(pattern, text, re.M)
        out[key] = None
        if m:
            try:
                out[key] = m.group(1).strip() if key == "result" else float(m.group(1))
            except ValueError:
                pass
    return out


def _straggler_floor(p: PlacementProblem, li: int) -> float:
    """A valid lower bound on layer li's busiest-GPU tokens: the mean load, and for j = 0 ..
    K-1 (pigeonhole) some GPU holds j + 1 of the j*P + 1 heaviest experts, hence at least the
    j + 1 lightest of them."""
    load = np.sort(p.load[li])[::-1]
    floor = load.sum() / p.gpus
    for j in range(min(p.max_experts_per_gpu, p.memory_slots)):
        n = j * p.gpus + 1
        if n > load.size:
            break
        floor = max(floor, load[n - j - 1:n].sum())
    return float(floor)


class _IlpModel:
    """The PuLP model of :func:`solve_ilp` (see its docstring), warm-started from ``start``."""

    def __init__(self, p: PlacementProblem, t: _Tables, start: np.ndarray | None):
        L, E, P, K, M = p.layers, p.experts, p.gpus, p.max_experts_per_gpu, p.memory_slots
        bpt, co = p.bytes_per_token, p.coactivation
        nodes = sorted(set(p.gpu_node))
        members = [[g for g in range(P) if p.gpu_node[g] == n] for n in nodes]
        gpu_reward = bpt * p.intra_node_cost
        node_reward = bpt * (p.inter_node_cost - p.intra_node_cost)
        self.const = bpt * p.inter_node_cost * co.sum()
        if len(nodes) == 1:  # every pair shares the server: that reward is a constant
            self.const -= node_reward * co.sum()
            node_reward = 0.0
        magnitude = t.dispatch.max(axis=2).sum() + p.balance_weight * p.load.sum() + self.const
        self.scale = magnitude / 1e4 if magnitude > 0 else 1.0
        prob = self.prob = pulp.LpProblem("expert_placement", pulp.LpMinimize)
        self.rows = self.nonzeros = 0
        x = self.x = [[[self._var(f"x_{li}_{e}_{g}", 0, pulp.LpBinary) for g in range(P)]
                       for e in range(E)] for li in range(L)]
        obj = [(x[li][e][g], t.dispatch[li, e, g] / self.scale)
               for li in range(L) for e in range(E) for g in range(P) if t.dispatch[li, e, g]]
        for li in range(L):
            for e in range(E):
                self._row([(v, 1) for v in x[li][e]], pulp.LpConstraintEQ, 1)
            if E > K:
                for g in range(P):
                    self._row([(x[li][e][g], 1) for e in range(E)], pulp.LpConstraintLE, K)
        if M < min(L * K, L * E):
            for g in range(P):
                self._row([(x[li][e][g], 1) for li in range(L) for e in range(E)],
                          pulp.LpConstraintLE, M)
        start_vals: list = []
        if p.balance_weight > 0:
            for li in range(L):
                m = self._var(f"m_{li}", _straggler_floor(p, li))
                obj.append((m, p.balance_weight / self.scale))
                for g in range(P):
                    self._row([(m, 1)] + [(x[li][e][g], -p.load[li, e]) for e in range(E)],
                              pulp.LpConstraintGE, 0)
                if start is not None:
                    start_vals.append((m, np.bincount(start[li], p.load[li], P).max()))
        k_gpu = min(K, M, E)
        n_y = 0
        for li in range(L - 1):
            for a_ in range(E):
                row = co[li, a_]
                nz = np.flatnonzero(row)
                if nz.size == 0:
                    continue
                desc = np.sort(row)[::-1]
                groups = []
                if gpu_reward > 0:
                    groups += [("y", g, [g], desc[:k_gpu].sum(), gpu_reward) for g in range(P)]
                if node_reward > 0:
                    groups += [("z", n, ms, desc[:min(E, k_gpu * len(ms))].sum(), node_reward)
                               for n, ms in zip(nodes, members, strict=True)]
                for name, key, gs, bound, reward in groups:
                    y = self._var(f"{name}_{li}_{a_}_{key}", 0)
                    n_y += 1
                    obj.append((y, -reward / self.scale))
                    self._row([(y, 1)] + [(x[li + 1][b][g], -row[b]) for b in nz for g in gs],
                              pulp.LpConstraintLE, 0)
                    self._row([(y, 1)] + [(x[li][a_][g], -bound) for g in gs],
                              pulp.LpConstraintLE, 0)
                    if start is not None:
                        here = np.isin(start[li + 1], gs)
                        start_vals.append((y, row[here].sum() if start[li, a_] in gs else 0.0))
        prob += pulp.LpAffineExpression(obj)
        if start is not None:
            for li in range(L):
                for e in range(E):
                    for g in range(P):
                        x[li][e][g].setInitialValue(int(start[li, e] == g))
            for v, val in start_vals:
                v.setInitialValue(float(val))
        self.size = {"binaries": L * E * P, "continuous": n_y + (L if p.balance_weight else 0),
                     "constraints": self.rows, "nonzeros": self.nonzeros}

    def _var(self, name: str, low: float, cat: str = pulp.LpContinuous) -> pulp.LpVariable:
        if hasattr(self.prob, "add_variable"):  # PuLP >= 3.3: variables belong to the model
            return self.prob.add_variable(name, lowBound=low, cat=cat)
        return pulp.LpVariable(name, lowBound=low, cat=cat)

    def _row(self, terms: list, sense: int, rhs: float) -> None:
        self.prob += pulp.LpConstraint(pulp.LpAffineExpression(terms), sense, rhs=rhs)
        self.rows += 1
        self.nonzeros += len(terms)

    def assignment(self) -> np.ndarray | None:
        """(L, E) GPU of each expert from the solution, None if CBC returned none."""
        vals = np.array([[[v.varValue if v.varValue is not None else np.nan for v in row]
                           for row in layer] for layer in self.x])
        if np.isnan(vals).any() or np.any(vals.max(axis=2) < 0.5):
            return None
        return vals.argmax(axis=2).astype(np.int64)
