"""Scenario loading: shipped files validate; bad input gives one line naming file and field."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pydantic
import pytest
import yaml

from sim.errors import UserError
from sim.scenario import (
    COLLECTIVES,
    Scenario,
    find_scenario,
    load_scenario,
    topology_overrides,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "scenarios").glob("*.yaml"))

GOOD = """\
name: good
seed: 3
topology: dgx-h100
fabric:
  message_overhead_us: 1.5
  ecmp: hash
benchmark:
  collective: all_to_all
  algorithm: direct
  sizes: [1MiB, 4096, 1.5KiB]
"""


def write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def edit(**sections) -> str:
    """GOOD with top-level sections replaced (None removes a section)."""
    data = yaml.safe_load(GOOD)
    for key, value in sections.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return yaml.safe_dump(data, sort_keys=False)


def error_of(path: Path, sets: list[str] = ()) -> str:
    with pytest.raises(UserError) as info:
        load_scenario(path, sets)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: "), message
    return message


# -- good input ------------------------------------------------------------------------------


def test_shipped_scenarios_exist():
    assert len(SHIPPED) >= 7


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_scenario_validates(path):
    sc = load_scenario(path)
    assert sc.name == path.stem
    if sc.kind == "benchmark":
        assert sc.benchmark.algorithm in COLLECTIVES[sc.benchmark.collective]
        assert sc.benchmark.sizes and all(s > 0 for s in sc.benchmark.sizes)
    elif sc.kind == "dispatch":
        assert sc.model is None and sc.dispatch.topk <= sc.dispatch.num_experts
    else:
        assert sc.model is not None and sc.moe is not None
        assert len(sc.model.moe_layers()) == sc.model.num_layers


def test_good_scenario_values(tmp_path):
    sc = load_scenario(write(tmp_path, GOOD))
    assert sc.name == "good" and sc.seed == 3
    assert sc.fabric.message_overhead_us == 1.5 and sc.fabric.ecmp == "hash"
    assert sc.fabric.rate_tolerance == 0.003  # default
    assert sc.benchmark.sizes == (1048576, 4096, 1536)
    assert sc.benchmark.traffic == "uniform"
    assert topology_overrides(sc) == ("dgx-h100", {})


def test_name_defaults_to_safe_file_stem(tmp_path):
    text = GOOD.replace("name: good\n", "")
    assert load_scenario(write(tmp_path, text, "my-run.yaml")).name == "my-run"
    assert load_scenario(write(tmp_path, text, "my run!.yaml")).name == "my-run"


def test_algorithm_defaults_to_the_librarys_choice(tmp_path):
    bench = {"collective": "all_reduce", "sizes": ["1MiB"]}
    sc = load_scenario(write(tmp_path, edit(benchmark=bench)))
    assert sc.benchmark.algorithm is None and sc.benchmark.protocol is None


def test_empty_section_means_defaults(tmp_path):
    sc = load_scenario(write(tmp_path, GOOD.replace("fabric:\n  message_overhead_us: 1.5\n"
                                                    "  ecmp: hash\n", "fabric:\n")))
    assert sc.fabric.ecmp == "balanced" and sc.fabric.message_overhead_us == 0.0


def test_topology_mapping_carries_overrides(tmp_path):
    topo = {"name": "h100-leaf-spine", "nodes": 4, "spine": {"count": 2}}
    sc = load_scenario(write(tmp_path, edit(topology=topo)))
    name, overrides = topology_overrides(sc)
    assert (name, overrides) == ("h100-leaf-spine", {"nodes": 4, "spine": {"count": 2}})
    overrides["spine"]["count"] = 99  # a copy: the frozen scenario is unchanged
    assert topology_overrides(sc)[1]["spine"]["count"] == 2


def test_scenario_is_frozen_and_round_trips(tmp_path):
    sc = load_scenario(write(tmp_path, GOOD))
    with pytest.raises(pydantic.ValidationError):
        sc.seed = 4
    assert Scenario.model_validate(sc.model_dump(mode="json")) == sc


def test_loading_scenarios_imports_no_engine():
    code = (
        "import sys; import sim.scenario as s; s.load_scenario(sys.argv[1]); "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('simpy', 'networkx', 'numpy') "
        "or m.startswith(('sim.network', 'sim.collectives', 'sim.topology'))]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(SHIPPED[0])], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


# -- bad input: one line naming file and field -----------------------------------------------


def test_unknown_top_level_key(tmp_path):
    msg = error_of(write(tmp_path, GOOD + "fabirc: {}\n"))
    assert msg.endswith(
        "fabirc: unknown field; allowed: name, description, seed, topology, fabric, benchmark, "
        "dispatch, model, moe, parallel, training, gating, serving, comm_profile, placement"
    )


def test_misspelt_section_reported_before_missing(tmp_path):
    msg = error_of(write(tmp_path, GOOD.replace("benchmark:", "benchmrk:")))
    assert ": benchmrk: unknown field" in msg


def test_unknown_nested_key(tmp_path):
    msg = error_of(write(tmp_path, GOOD.replace("ecmp: hash", "ecmp: hash\n  foo: 1")))
    assert "fabric.foo: unknown field; allowed: message_overhead_us, ecmp, rate_tolerance" in msg


def test_wrong_enum(tmp_path):
    path = write(tmp_path, GOOD.replace("ecmp: hash", "ecmp: random"))
    assert error_of(path) == f"{path}: fabric.ecmp: must be one of balanced, hash (got 'random')"


def test_negative_overhead(tmp_path):
    msg = error_of(write(tmp_path, GOOD.replace("message_overhead_us: 1.5",
                                                "message_overhead_us: -2.0")))
    assert msg.endswith("fabric.message_overhead_us: must be >= 0 (got -2.0)")


def test_rate_tolerance_upper_bound(tmp_path):
    fabric = {"rate_tolerance": 0.9}
    assert "fabric.rate_tolerance: must be <= 0.5 (got 0.9)" in error_of(
        write(tmp_path, edit(fabric=fabric)))


def test_bad_size_string(tmp_path):
    msg = error_of(write(tmp_path, GOOD.replace("4096", "12 parsecs")))
    assert "benchmark.sizes[1]: must be a byte count such as" in msg
    assert msg.endswith("(got '12 parsecs')")


@pytest.mark.parametrize(("sizes", "expected"), [
    ([0], "benchmark.sizes[0]: must be a positive byte count (got 0)"),
    ([], "benchmark.sizes: must not be empty (got [])"),
    ("1MiB", "benchmark.sizes: must be a list (got '1MiB')"),
])
def test_bad_sizes(tmp_path, sizes, expected):
    bench = {"collective": "all_to_all", "sizes": sizes}
    assert error_of(write(tmp_path, edit(benchmark=bench))).endswith(expected)


def test_algorithm_not_allowed_for_collective(tmp_path):
    bench = {"collective": "all_reduce", "algorithm": "direct", "sizes": [1024]}
    msg = error_of(write(tmp_path, edit(benchmark=bench)))
    assert msg.endswith("benchmark.algorithm: must be one of ring, nvls, tree for all_reduce "
                        "(got 'direct')")


def test_unknown_collective_lists_allowed(tmp_path):
    bench = {"collective": "broadcast", "sizes": [1024]}
    msg = error_of(write(tmp_path, edit(benchmark=bench)))
    assert "benchmark.collective: must be one of all_to_all, all_reduce, all_gather" in msg


def test_zipf_only_for_all_to_all(tmp_path):
    bench = {"collective": "all_gather", "traffic": "zipf", "sizes": [1024]}
    assert "benchmark.traffic: zipf traffic is only for all_to_all" in error_of(
        write(tmp_path, edit(benchmark=bench)))


def test_missing_required(tmp_path):
    path = write(tmp_path, edit(benchmark=None))
    assert error_of(path) == (
        f"{path}: model: required (a scenario needs benchmark:, or model: and moe:)")
    msg = error_of(write(tmp_path, edit(benchmark={"sizes": [1]})))
    assert "benchmark.collective: required field is missing; it must be one of all_to_all" in msg


@pytest.mark.parametrize(("line", "expected"), [
    ("seed: -1", "seed: must be >= 0 (got -1)"),
    ("seed: true", "seed: must be an integer (got True)"),
    ("seed: 1.5", "seed: must be an integer (got 1.5)"),
    ("name: two words", "name: may contain only letters, digits, '.', '_' and '-'"),
    ("description: [a]", "description: must be a string"),
])
def test_wrong_scalar_types(tmp_path, line, expected):
    text = GOOD.replace("name: good\nseed: 3\n", line + "\n")
    assert expected in error_of(write(tmp_path, text))


def test_section_must_be_mapping(tmp_path):
    msg = error_of(write(tmp_path, edit(fabric=5)))
    assert "fabric: must be a mapping with keys message_overhead_us, ecmp, rate_tolerance" in msg


def test_malformed_yaml_names_line(tmp_path):
    text = "name: x\ntopology: dgx-h100\nbenchmark:\n  collective: all_to_all\n sizes: [1]\n"
    msg = error_of(write(tmp_path, text))
    assert "line 5" in msg and "invalid YAML" in msg


def test_duplicate_key_names_line(tmp_path):
    msg = error_of(write(tmp_path, GOOD + "seed: 4\n"))
    assert "line 11" in msg and "key 'seed' appears twice in one mapping" in msg


@pytest.mark.parametrize(("text", "expected"), [
    ("", "file is empty"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_not_a_mapping(tmp_path, text, expected):
    assert expected in error_of(write(tmp_path, text))


def test_missing_file(tmp_path):
    assert error_of(tmp_path / "nope.yaml").endswith("no such file")


# -- finding shipped scenarios by name -------------------------------------------------------


def test_find_scenario_from_root_subdirectory_and_elsewhere(tmp_path, monkeypatch):
    want = (REPO / "scenarios" / "moe-switch-h100.yaml").resolve()
    for cwd in (REPO, REPO / "tests", tmp_path):  # root, a subdirectory, outside the repo
        monkeypatch.chdir(cwd)
        assert find_scenario("moe-switch-h100").resolve() == want
        assert find_scenario("moe-switch-h100.yaml").resolve() == want


def test_find_scenario_prefers_the_nearest_scenarios_dir(tmp_path, monkeypatch):
    (tmp_path / "scenarios").mkdir()
    mine = write(tmp_path / "scenarios", GOOD, "moe-switch-h100.yaml")
    (tmp_path / "deep" / "er").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "deep" / "er")
    assert find_scenario("moe-switch-h100").resolve() == mine.resolve()
    assert find_scenario(mine) == mine  # an existing path is returned as it is


@pytest.mark.parametrize("name", ["no-such-scenario", "somewhere/no-such-scenario.yaml"])
def test_find_scenario_not_found_is_one_line(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as e:
        find_scenario(name)
    assert "no-such-scenario" in str(e.value) and "\n" not in str(e.value)


# -- --set overrides -------------------------------------------------------------------------


def test_set_overrides_values(tmp_path):
    path = write(tmp_path, edit(fabric=None))
    sc = load_scenario(path, ["fabric.ecmp=hash", "seed=7", "benchmark.sizes=[2MiB, 1024]",
                              "fabric.rate_tolerance=0"])
    assert sc.fabric.ecmp == "hash"  # intermediate `fabric` mapping created
    assert sc.fabric.rate_tolerance == 0.0 and sc.seed == 7
    assert sc.benchmark.sizes == (2 * 1024**2, 1024)


def test_set_topology_override_on_string_topology(tmp_path):
    sc = load_scenario(write(tmp_path, GOOD), ["topology.nodes=4", "topology.links.x=1"])
    assert topology_overrides(sc) == ("dgx-h100", {"nodes": 4, "links": {"x": 1}})
    sc = load_scenario(write(tmp_path, GOOD), ["topology=a100-p4d"])
    assert topology_overrides(sc) == ("a100-p4d", {})


@pytest.mark.parametrize(("arg", "expected"), [
    ("fabric.foo=1", "fabric.foo: unknown field; allowed: message_overhead_us, ecmp,"),
    ("nothere.x=1", "nothere: unknown field; allowed: name, description,"),
    ("fabric.ecmp.x=1", "fabric.ecmp: is a value, not a section"),
    ("seed=abc", "seed: must be an integer (got 'abc') [from --set seed=abc]"),
    ("fabric.message_overhead_us=-1", "fabric.message_overhead_us: must be >= 0 (got -1)"),
    ("benchmark.algorithm=ring", "benchmark.algorithm: must be one of direct, pairwise,"),
    ("benchmark.sizes=[1MiB, lots]", "benchmark.sizes[1]: must be a byte count"),
    ("seed", "--set seed: expected KEY=VALUE"),
    ("=3", "--set =3: expected KEY=VALUE"),
    ("fabric..ecmp=hash", "is not a dotted key"),
    ("seed=[1,", "--set seed=[1,: value is not valid YAML"),
])
def test_bad_set(tmp_path, arg, expected):
    msg = error_of(write(tmp_path, GOOD), [arg])
    assert expected in msg
    if "=" in arg and arg.split("=")[0] and ".." not in arg and "[1," not in arg:
        assert f"[from --set {arg}]" in msg


def test_a_training_step_needs_its_sequence_length(tmp_path):
    from tests.conftest import TRAINING, merged

    data = merged(TRAINING)
    del data["model"]["seq_length"]
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match=rf"^{path}: model\.seq_length: required for a training "
                                        "step"):
        load_scenario(path)
