"""Synthetic gate generator statistics and routing-trace files."""

import json

import numpy as np
import pytest

from sim.errors import UserError
from sim.workload import GateConfig, GateGenerator, RoutingTrace, load_trace, save_trace

L, E, T = 4, 16, 4096


def top1(cfg: GateConfig, seed: int = 0, step: int = 0, num_layers: int = L) -> np.ndarray:
    gen = GateGenerator(num_layers, E, cfg, seed)
    return gen.logits(step, gen.tokens(step, T)).argmax(axis=-1)  # (L, T)


def loads(top: np.ndarray) -> np.ndarray:
    return np.stack([np.bincount(layer, minlength=E) for layer in top])  # (L, E)


def imbalance(top: np.ndarray) -> float:
    lo = loads(top)
    return float((lo.max(axis=1) / lo.mean(axis=1)).mean())


def test_same_seed_and_step_repeat_and_steps_differ():
    cfg = GateConfig(affinity=1.0, temporal_locality=0.3, drift=0.5, drift_period=5)
    a, b = GateGenerator(L, E, cfg, 7), GateGenerator(L, E, cfg, 7)
    assert np.array_equal(a.tokens(3, 512), b.tokens(3, 512))
    ids = a.tokens(3, 512)
    za = a.logits(3, ids)
    assert za.shape == (L, 512, E) and za.dtype == np.float32
    assert np.array_equal(za, b.logits(3, ids))
    assert np.array_equal(za, a.logits(3, ids, out=np.empty_like(za)))
    assert not np.array_equal(a.tokens(3, 512), a.tokens(4, 512))
    assert not np.array_equal(za, a.logits(4, ids))
    assert not np.array_equal(za, GateGenerator(L, E, cfg, 8).logits(3, ids))


def test_logits_are_prior_plus_noise_plus_bias_and_a_reused_buffer_changes_nothing():
    # the compiled fill against the same float32 sums in numpy (no affinity, no locality)
    gen = GateGenerator(3, 16, GateConfig(sigma_ctx=1.0, popularity_skew=1.0), seed=2)
    ids = gen.tokens(5, 64)
    z = gen.logits(5, ids)
    noise_rng = gen._rng("context", 5, 0)
    bias = gen.bias(5)
    for layer in range(3):
        want = gen._log_prior[gen._buckets(ids, layer)] + gen._noise(noise_rng, ids.size)
        want += bias[layer]
        assert np.array_equal(z[layer], want)
    buf = np.full_like(z, np.nan)
    assert np.array_equal(gen.logits(5, ids, out=buf), z)


def test_balanced_by_default_and_skew_raises_imbalance():
    balanced = imbalance(top1(GateConfig()))
    assert 1.05 < balanced < 1.5
    skewed = [imbalance(top1(GateConfig(popularity_skew=s))) for s in (0.5, 1.0, 2.0)]
    assert balanced < skewed[0] < skewed[1] < skewed[2]


def test_domain_shift_unbalances_a_calibrated_router():
    assert imbalance(top1(GateConfig(domain_shift=True))) > imbalance(top1(GateConfig())) + 0.3


def test_collapse_leaves_a_fraction_of_experts_idle():
    gen = GateGenerator(L, E, GateConfig(collapse_fraction=0.4), 0)
    lo = loads(gen.logits(0, gen.tokens(0, T)).argmax(axis=-1))
    idle = lo < 0.01 * T / E
    assert len(gen.collapsed) == round(0.4 * E)
    assert idle[:, gen.collapsed].all()
    assert 0.35 <= idle.mean() <= 0.45


def test_temporal_locality_raises_consecutive_repeats():
    repeats = []
    for rho in (0.0, 0.2, 0.5, 0.7):
        top = top1(GateConfig(temporal_locality=rho))
        repeats.append(float((top[:, 1:] == top[:, :-1]).mean()))
    assert repeats[0] < 0.15
    assert all(a + 0.1 < b for a, b in zip(repeats, repeats[1:], strict=False))
    assert repeats[-1] == pytest.approx(0.7, abs=0.08)


def transition_concentration(top: np.ndarray) -> float:
    """Mean over layers of P(most likely next expert | previous top-1 expert)."""
    out = []
    for layer in range(1, top.shape[0]):
        counts = np.zeros((E, E))
        np.add.at(counts, (top[layer - 1], top[layer]), 1)
        out.append(counts.max(axis=1).sum() / counts.sum())
    return float(np.mean(out))


def test_affinity_concentrates_layer_transitions():
    none, mid, strong = (transition_concentration(top1(GateConfig(affinity=b))) for b in (0, 1, 4))
    assert none < 0.35
    assert none < mid < strong
    assert strong > 0.7


def test_affinity_adds_only_moderate_imbalance():
    # every expert is a target of the same number of rows, but row weights differ (~1.6 measured)
    assert imbalance(top1(GateConfig(affinity=2.0))) < 2.0


def test_token_id_prior_routes_a_token_consistently_across_contexts():
    gen = GateGenerator(L, E, GateConfig(), 0)
    ids = gen.tokens(0, T)
    a = gen.logits(0, ids).argmax(axis=-1)
    b = gen.logits(1, ids).argmax(axis=-1)  # same tokens, fresh context noise
    shuffled = gen.logits(1, ids[::-1].copy()).argmax(axis=-1)[:, ::-1]
    assert (a == b).mean() > 0.45  # chance is about 1/16
    assert (a == shuffled).mean() > 0.45


def test_drift_moves_popularity_slowly():
    gen = GateGenerator(L, E, GateConfig(drift=1.0, drift_period=10), 0)
    b0 = gen.bias(0)
    near = np.abs(gen.bias(1) - b0).mean()
    far = np.abs(gen.bias(2000) - b0).mean()
    assert near < 0.1 < far
    assert np.abs(gen.bias(10) - gen.bias(9)).mean() < 0.1  # continuous across periods
    still = GateGenerator(L, E, GateConfig(), 0)
    assert np.array_equal(still.bias(0), still.bias(2000))
    lo0, lo_far = (
        loads(top1(GateConfig(drift=1.0, drift_period=10), step=0)),
        loads(top1(GateConfig(drift=1.0, drift_period=10), step=2000)),
    )
    assert np.abs(lo0 - lo_far).sum() > 0.2 * lo0.sum()


def test_bad_config_is_a_user_error():
    with pytest.raises(UserError, match="collapse_fraction"):
        GateConfig(collapse_fraction=1.2)


# ------------------------------------------------------------------------------------- traces
def sample_trace(k: int = 2) -> RoutingTrace:
    gen = GateGenerator(3, 8, GateConfig(vocab_size=100), 1)
    ids = gen.tokens(0, 5)
    return RoutingTrace.from_logits(gen.logits(0, ids), k, token_ids=ids)


@pytest.mark.parametrize("suffix", [".npz", ".jsonl"])
def test_trace_round_trip(tmp_path, suffix):
    trace = sample_trace()
    path = tmp_path / f"t{suffix}"
    save_trace(trace, path)
    back = load_trace(path)
    assert back.num_experts == 8 and back.experts.shape == (3, 5, 2)
    assert np.array_equal(back.experts, trace.experts)
    assert np.allclose(back.scores, trace.scores, atol=1e-6)
    assert np.array_equal(back.token_ids, trace.token_ids)


def test_hand_written_jsonl_without_header(tmp_path):
    path = tmp_path / "hand.jsonl"
    lines = [
        {"layer": 0, "token": 0, "experts": [3, 7], "scores": [0.6, 0.4]},
        {"layer": 0, "token": 1, "experts": [1, 2], "scores": [0.5, 0.5]},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    trace = load_trace(path)
    assert trace.num_experts == 8 and trace.token_ids is None
    assert trace.experts.tolist() == [[[3, 7], [1, 2]]]


def write_jsonl(path, rows, header=None):
    text = [json.dumps(header)] if header else []
    path.write_text("\n".join(text + [json.dumps(r) for r in rows]) + "\n")


def row(layer, token, experts, scores=None):
    return {
        "layer": layer,
        "token": token,
        "experts": experts,
        "scores": scores or [1 / len(experts)] * len(experts),
    }


@pytest.mark.parametrize(
    "rows, header, field",
    [
        ([row(0, 0, [3, 9])], {"num_experts": 8}, "experts"),  # id out of range
        ([row(0, 0, [1, 2]), row(0, 1, [1])], None, "experts"),  # ragged k
        ([row(0, 0, [1, 2], [0.5])], None, "scores"),  # length mismatch
        ([row(0, 0, [1, 2]), row(0, 0, [1, 3])], None, "token"),  # duplicate
        ([row(0, 0, [1, 2]), row(1, 1, [1, 3])], None, "token"),  # missing (layer, token)
        ([row(0, 0, [1, 1])], None, "experts"),  # same expert twice
        ([row(0, 0, [1, 2], [1.5, 0.1])], None, "scores"),  # not a probability
        ([{**row(0, 0, [1]), "gate": 1}], None, "gate"),  # unknown field
    ],
)
def test_bad_jsonl_names_file_and_field(tmp_path, rows, header, field):
    path = tmp_path / "bad.jsonl"
    write_jsonl(path, rows, header)
    with pytest.raises(UserError) as err:
        load_trace(path)
    message = str(err.value)
    assert str(path) in message and field in message and "\n" not in message


def test_bad_npz_and_extension_name_file_and_field(tmp_path):
    good = sample_trace()
    cases = {
        "range": (
            {"experts": good.experts + 8, "scores": good.scores, "num_experts": 8},
            "experts",
        ),
        "shape": (
            {"experts": good.experts, "scores": good.scores[:, :, :1], "num_experts": 8},
            "scores",
        ),
        "missing": ({"experts": good.experts, "scores": good.scores}, "num_experts"),
        "ids": (
            {
                "experts": good.experts,
                "scores": good.scores,
                "num_experts": 8,
                "token_ids": np.arange(3),
            },
            "token_ids",
        ),
    }
    for name, (arrays, field) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(UserError, match=field) as err:
            load_trace(path)
        assert str(path) in str(err.value)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="junk.npz"):
        load_trace(junk)
    with pytest.raises(UserError, match="extension"):
        load_trace(tmp_path / "trace.csv")
    with pytest.raises(UserError, match="extension"):
        save_trace(good, tmp_path / "trace.csv")


def test_every_random_stream_in_the_code_is_registered_and_unknown_names_are_refused():
    import re
    from pathlib import Path

    from sim.rng import STREAMS, stream

    with pytest.raises(ValueError, match="unknown random stream 'nope'"):
        stream(0, "nope")
    root = Path(__file__).resolve().parents[1] / "sim"
    used = set()
    for f in root.rglob("*.py"):
        used |= set(re.findall(r"""stream\([^()]*?,\s*["'](\w+)["']\)""", f.read_text()))
    assert used == set(STREAMS)  # every name used is registered, every registered name used
    a, b = stream(3, "gating").random(4), stream(3, "gating").random(4)
    assert np.array_equal(a, b) and not np.array_equal(a, stream(3, "routing").random(4))
