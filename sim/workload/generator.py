"""Seeded synthetic router logits that look like real MoE gating (papers.md section 7.2).

A token's logit for expert ``e`` at layer ``l`` is the sum of

* ``log pi[l, v, e]``: a fixed, peaky token-ID prior (Dirichlet(``alpha_id``)), drawn once;
* ``sigma_ctx * N(0, 1)``: context noise, fresh per token, layer and step;
* ``b[l, e] + d(step)[e]``: popularity bias, calibrated at construction so that the top-1 load
  under the in-domain token stream follows Zipf(``popularity_skew``) over the live experts,
  with ``collapse_fraction`` of the experts switched off, plus a slow AR(1) drift ``d``;
* ``beta * log T[e_prev, e]``: inter-layer affinity from the token's top-1 expert at ``l - 1``.

Then, with probability ``temporal_locality``, a token takes over the previous token's logits in
that layer (so also its choice). Everything is vectorized over tokens and experts; only layers
are a Python loop, because affinity needs the previous layer's choice.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields

import numba
import numpy as np
from scipy.special import ndtri

from sim.errors import UserError
from sim.rng import stream

#: Log-probability floor of the prior and of the transition matrix (entries off a row's support).
LOG_FLOOR = float(np.log(1e-12))
#: Log of the small mass a transition row puts on experts outside its 1-3 targets.
LOG_AFFINITY_FLOOR = float(np.log(1e-3))
#: Bias that switches a collapsed expert off (far below any prior gap).
COLLAPSED_BIAS = -60.0
#: AR(1) coefficient between consecutive drift periods (0.9: correlation time of 10 periods).
DRIFT_MEMORY = 0.9
#: Tokens and iterations used to calibrate the popularity bias at construction.
CALIBRATION_TOKENS = 2048
CALIBRATION_ROUNDS = 12

_MIX1 = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xBF58476D1CE4E5B9)


@dataclass(frozen=True)
class GateConfig:
    """Knobs of the synthetic gate (all dimensionless).

    vocab_size: token IDs are ``0 .. vocab_size - 1``; ID 0 is the most frequent.
    zipf_exponent: token frequency of rank r is proportional to ``r ** -zipf_exponent``.
    alpha_id: Dirichlet concentration of the token-ID prior (0.1-0.3 is peaky).
    prior_buckets: number of distinct prior rows, a shared ``(prior_buckets, E)`` table; token
        ``v`` at layer ``l`` uses row ``hash_l(v) % prior_buckets`` (a different hash per
        layer), so memory does not grow with vocabulary or depth.
    sigma_ctx: standard deviation of the context noise on the logits, in nats.
    popularity_skew: Zipf exponent s of the top-1 expert popularity (0 balanced, up to ~2).
    collapse_fraction: fraction of experts with about zero load (LocMoE's collapse: 0.4).
    affinity: strength beta of the inter-layer affinity term (0 off; ~1-3 is strong).
    affinity_fanout: number of target experts (1-3) per row of the transition matrix.
    temporal_locality: probability rho that a token copies the previous token's logits.
    drift: stationary standard deviation (nats) of the AR(1) popularity drift (0 off).
    drift_period: steps per AR(1) update; the bias is interpolated linearly in between.
    domain_shift: draw tokens from an out-of-domain stream (frequencies permuted over IDs).
    """

    vocab_size: int = 32000
    zipf_exponent: float = 1.1
    alpha_id: float = 0.2
    prior_buckets: int = 4096
    sigma_ctx: float = 0.5
    popularity_skew: float = 0.0
    collapse_fraction: float = 0.0
    affinity: float = 0.0
    affinity_fanout: int = 2
    temporal_locality: float = 0.0
    drift: float = 0.0
    drift_period: int = 100
    domain_shift: bool = False

    @classmethod
    def from_settings(cls, gating) -> GateConfig:
        """The generator knobs of a scenario's ``gating`` section (its fields of the same
        names; ``trace`` and ``routing_groups`` are not the generator's)."""
        names = [f.name for f in fields(cls) if hasattr(gating, f.name)]
        return cls(**{name: getattr(gating, name) for name in names})

    def __post_init__(self) -> None:
        rules = {
            "vocab_size": (self.vocab_size >= 1, "an integer >= 1"),
            "zipf_exponent": (self.zipf_exponent >= 0, "a number >= 0"),
            "alpha_id": (self.alpha_id > 0, "a number > 0"),
            "prior_buckets": (self.prior_buckets >= 1, "an integer >= 1"),
            "sigma_ctx": (self.sigma_ctx >= 0, "a number >= 0"),
            "popularity_skew": (self.popularity_skew >= 0, "a number >= 0"),
            "collapse_fraction": (0 <= self.collapse_fraction < 1, "a number in [0, 1)"),
            "affinity": (self.affinity >= 0, "a number >= 0"),
            "affinity_fanout": (1 <= self.affinity_fanout <= 3, "an integer in 1..3"),
            "temporal_locality": (0 <= self.temporal_locality < 1, "a number in [0, 1)"),
            "drift": (self.drift >= 0, "a number >= 0"),
            "drift_period": (self.drift_period >= 1, "an integer >= 1"),
        }
        for f in fields(self):
            if f.name in rules and not rules[f.name][0]:
                value = getattr(self, f.name)
                raise UserError(f"gating: {f.name}: {value!r} is not {rules[f.name][1]}")


def _name_key(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


class GateGenerator:
    """Router logits for ``num_layers`` MoE layers of ``num_experts`` experts.

    Static structure (priors, transitions, bias) comes from sub-streams of
    ``sim.rng.stream(seed, "gating")``; per-step draws from sub-streams keyed by
    ``(name, step)``, so any step can be generated in any order and is reproducible.
    """

    def __init__(self, num_layers: int, num_experts: int, config: GateConfig, seed: int):
        if num_layers < 1 or num_experts < 2:
            raise UserError(
                f"gating: num_layers={num_layers}, num_experts={num_experts}: "
                "need at least 1 layer and 2 experts"
            )
        self.num_layers, self.num_experts = int(num_layers), int(num_experts)
        self.config, self.seed = config, int(seed)
        self._root = stream(seed, "gating").bit_generator.seed_seq
        cfg, L, E = config, self.num_layers, self.num_experts

        # Token frequencies by rank; the in-domain stream maps rank r to ID r, the shifted one
        # to a random permutation of IDs.
        ranks = np.arange(1, cfg.vocab_size + 1, dtype=np.float64)
        pmf = ranks**-cfg.zipf_exponent
        self._cdf = np.cumsum(pmf / pmf.sum())
        self._cdf[-1] = 1.0
        self._shift_ids = self._rng("domain_shift").permutation(cfg.vocab_size)

        levels = (np.arange(2**16, dtype=np.float64) + 0.5) / 2**16
        self._noise_table = (cfg.sigma_ctx * ndtri(levels)).astype(np.float32)

        # Token-ID prior: a shared table of Dirichlet rows, hashed per layer.
        rng = self._rng("prior")
        table = rng.gamma(cfg.alpha_id, size=(cfg.prior_buckets, E))
        table /= np.maximum(table.sum(axis=1, keepdims=True), 1e-300)
        self._log_prior = np.maximum(np.log(np.maximum(table, 1e-300)), LOG_FLOOR).astype(
            np.float32
        )
        self._salts = rng.integers(0, 2**63, size=L, dtype=np.uint64)

        # Affinity: row e of layer l's transition goes to affinity_fanout distinct experts;
        # every expert is the target of exactly fanout rows, so affinity adds only mild skew.
        rng = self._rng("affinity")
        m = cfg.affinity_fanout
        self._targets = np.empty((L, E, m), dtype=np.int64)
        self._bonus = np.empty((L, E, m), dtype=np.float32)
        for layer in range(L):
            p, q = rng.permutation(E), rng.permutation(E)
            self._targets[layer] = p[(q[:, None] + np.arange(m)) % E]
            w = np.sort(rng.dirichlet(np.ones(m), size=E), axis=1)[:, ::-1]
            self._bonus[layer] = np.log(w) - LOG_AFFINITY_FLOOR

        # Popularity: Zipf(s) target over live experts, ranks assigned at random.
        rng = self._rng("popularity")
        n_dead = int(round(cfg.collapse_fraction * E))
        order = rng.permutation(E)
        self.collapsed = np.sort(order[:n_dead])
        live = order[n_dead:]
        target = np.zeros(E)
        target[live] = np.arange(1, E - n_dead + 1, dtype=np.float64) ** -cfg.popularity_skew
        self.target_popularity = target / target.sum()
        self._bias = self._calibrate_bias()
        self._drift_cache: list[np.ndarray] = []

    # ---------------------------------------------------------------------------- streams
    def _rng(self, name: str, *keys: int) -> np.random.Generator:
        seq = np.random.SeedSequence(
            self._root.entropy, spawn_key=(*self._root.spawn_key, _name_key(name), *keys)
        )
        return np.random.default_rng(seq)

    # ---------------------------------------------------------------------------- public
    def tokens(self, step: int, num_tokens: int, group: int = 0) -> np.ndarray:
        """Token IDs ``(num_tokens,)`` int64 of routing group ``group`` (e.g. a GPU's
        micro-batch) at ``step``; deterministic in (seed, step, group)."""
        u = self._rng("tokens", int(step), int(group)).random(int(num_tokens))
        ranks = np.searchsorted(self._cdf, u, side="right")
        ranks = np.minimum(ranks, self.config.vocab_size - 1).astype(np.int64)
        return self._shift_ids[ranks] if self.config.domain_shift else ranks

    def bias(self, step: int) -> np.ndarray:
        """Popularity bias ``(L, E)`` float32 in nats at ``step`` (calibrated base plus drift)."""
        return (self._bias + self._drift(step)[None, :]).astype(np.float32)

    def logits(
        self, step: int, token_ids: np.ndarray, out: np.ndarray | None = None, group: int = 0
    ) -> np.ndarray:
        """Router logits ``(L, T, E)`` float32 for ``token_ids`` ``(T,)`` at ``step``.

        Softmax over the last axis gives gate probabilities; top-k of it is the routing.
        Deterministic in ``(seed, step, group, token_ids)``. ``out``: an optional float32
        ``(L, T, E)`` buffer to fill; reusing one across steps avoids re-faulting fresh memory,
        which is most of the cost at 64 x 8192 x 256 (537 MB).
        """
        ids = self._check_ids(token_ids)
        cfg, L, E, T = self.config, self.num_layers, self.num_experts, ids.size
        if out is None:
            out = np.empty((L, T, E), dtype=np.float32)
        elif out.shape != (L, T, E) or out.dtype != np.float32:
            raise ValueError(f"out must be float32 {(L, T, E)}, got {out.dtype} {out.shape}")
        noise_rng = self._rng("context", int(step), int(group))
        copy_rng = self._rng("locality", int(step), int(group))
        bias = self.bias(step)
        beta = np.float32(cfg.affinity)
        rows = np.arange(T)
        prev = None
        for layer in range(L):
            z = out[layer]
            _prior_noise_bias(z, self._log_prior, self._buckets(ids, layer), self._noise_table,
                              self._noise_levels(noise_rng, T), bias[layer])
            if beta > 0 and prev is not None:
                z[rows[:, None], self._targets[layer, prev]] += beta * self._bonus[layer, prev]
            if cfg.temporal_locality > 0 and T > 1:
                copy = copy_rng.random(T) < cfg.temporal_locality
                copy[0] = False
                if copy.any():
                    src = np.maximum.accumulate(np.where(copy, 0, rows))
                    z[:] = np.take(z, src, axis=0)
            if beta > 0:
                prev = z.argmax(axis=1)
        return out

    # ---------------------------------------------------------------------------- internals
    def _check_ids(self, token_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(token_ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token_ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"token_ids must lie in [0, {self.config.vocab_size})")
        return ids.astype(np.int64, copy=False)

    def _noise(self, rng: np.random.Generator, num_tokens: int) -> np.ndarray:
        """Context noise ``(T, E)`` float32: sigma_ctx times a standard normal.

        Drawn as 16-bit uniforms mapped through a 65,536-entry table of normal quantiles (tails
        cut at about 4.3 sigma): about 7x faster than ``standard_normal`` and plenty for noise.
        """
        return self._noise_table[self._noise_levels(rng, num_tokens)]

    def _noise_levels(self, rng: np.random.Generator, num_tokens: int) -> np.ndarray:
        """The ``(T, E)`` uint16 rows of the noise table that ``_noise`` looks up."""
        n = num_tokens * self.num_experts
        raw = rng.bit_generator.random_raw((n + 3) // 4).view("<u2")[:n]
        return raw.reshape(num_tokens, self.num_experts)

    def _buckets(self, ids: np.ndarray, layer: int) -> np.ndarray:
        """Prior row of each token at ``layer``: a salted 64-bit mix hash, mod prior_buckets."""
        h = (ids.astype(np.uint64) + self._salts[layer]) * _MIX1
        h ^= h >> np.uint64(31)
        h *= _MIX2
        h ^= h >> np.uint64(29)
        return (h % np.uint64(self.config.prior_buckets)).astype(np.intp)

    def _calibrate_bias(self) -> np.ndarray:
        """Per-layer bias ``(L, E)`` whose top-1 load matches the target on in-domain tokens.

        Fixed-point iteration b += 0.5 * log(target / observed) on a fixed calibration batch
        (prior + context noise, no affinity or locality); collapsed experts are pinned off.
        """
        L, E = self.num_layers, self.num_experts
        rng = self._rng("calibration")
        u = rng.random(CALIBRATION_TOKENS)
        ids = np.minimum(np.searchsorted(self._cdf, u, side="right"), self.config.vocab_size - 1)
        bias = np.zeros((L, E))
        live = self.target_popularity > 0
        bias[:, ~live] = COLLAPSED_BIAS
        log_target = np.log(np.where(live, self.target_popularity, 1.0))
        floor = 0.5 / CALIBRATION_TOKENS
        for layer in range(L):
            z = self._log_prior[self._buckets(ids, layer)] + self._noise(rng, ids.size)
            b = bias[layer]
            for _ in range(CALIBRATION_ROUNDS):
                top1 = (z + b.astype(np.float32)).argmax(axis=1)
                load = np.bincount(top1, minlength=E) / CALIBRATION_TOKENS
                step = 0.5 * (log_target - np.log(np.maximum(load, floor)))
                b[live] += step[live]
                b[live] -= b[live].mean()
        return bias

    def _drift(self, step: int) -> np.ndarray:
        """Drift ``(E,)`` in nats: AR(1) per period, linear in between; zero when drift is off."""
        cfg, E = self.config, self.num_experts
        if cfg.drift == 0:
            return np.zeros(E)
        k, frac = divmod(max(int(step), 0), cfg.drift_period)
        innovation = cfg.drift * np.sqrt(1 - DRIFT_MEMORY**2)
        cache = self._drift_cache
        if not cache:
            cache.append(cfg.drift * self._rng("drift", 0).standard_normal(E))
        while len(cache) < k + 2:
            n = len(cache)
            shock = innovation * self._rng("drift", n).standard_normal(E)
            cache.append(DRIFT_MEMORY * cache[-1] + shock)
        t = frac / cfg.drift_period
        d = (1 - t) * cache[k] + t * cache[k + 1]
        d[self.collapsed] = 0.0
        return d


@numba.njit(cache=True, nogil=True)
def _prior_noise_bias(z, log_prior, buckets, noise_table, levels, bias):  # pragma: no cover
    """z[t, e] = (log_prior[buckets[t], e] + noise_table[levels[t, e]]) + bias[e], in float32:
    the sums numpy would form, in one pass instead of two gathers and two adds."""
    t, e = z.shape
    for r in range(t):
        row = log_prior[buckets[r]]
        for c in range(e):
            z[r, c] = (row[c] + noise_table[levels[r, c]]) + bias[c]
