"""The offline cache study: decode expert sequence and policy hit rates."""

import pytest

from sim.scenario.load import load_scenario
from sim.serving.cache import replay
from sim.serving.study import cache_study, decode_steps, main
from tests.conftest import SERVING, TRAINING


@pytest.fixture
def scenario(tmp_path):
    import yaml

    data = yaml.safe_load(yaml.safe_dump(SERVING))
    data["serving"]["router"] = "layer_aligned"
    data["serving"]["requests"]["poisson"].update(n=6, output_tokens=40)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_decode_steps_are_one_expert_per_decode_token(scenario):
    sc = load_scenario(scenario)
    steps = decode_steps(sc)
    assert len(steps) == 6 * (40 - 1)  # the prefill produces each request's first token
    assert all(len(s) == 1 and 0 <= next(iter(s)) < 8 for s in steps)


def test_belady_tops_every_policy_and_hit_rates_grow_with_capacity(scenario):
    sc = load_scenario(scenario)
    rows = cache_study(sc, [2, 3, 5])
    rate = {(r["capacity"], r["policy"]): r["hit_rate"] for r in rows}
    for c in (2, 3, 5):
        assert rate[(c, "belady")] >= max(rate[(c, p)] for p in ("lru", "lfu", "random"))
    for p in ("lru", "belady"):
        assert rate[(2, p)] < rate[(3, p)] < rate[(5, p)]
    steps = decode_steps(sc)
    assert rate[(3, "lru")] == replay(steps, 3, "lru").hit_rate


def test_study_command_prints_a_table(scenario, capsys):
    main([str(scenario), "--capacities", "2,4"])
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "| cached experts | lru | lfu | random | belady |"
    assert [line.split("|")[1].strip() for line in out[3:]] == ["2", "4"]


def test_study_refuses_a_training_scenario(tmp_path, capsys):
    import yaml


    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(TRAINING))
    with pytest.raises(SystemExit) as e:
        main([str(path)])
    assert e.value.code == 2
    assert "serving: required" in capsys.readouterr().err
