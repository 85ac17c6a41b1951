"""Topology: catalog, builders, YAML schema and loader, connectivity."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest

from sim.errors import UserError
from sim.inputs import repo_dir
from sim.topology import builders, get_gpu, list_gpus, list_topologies, load_topology
from sim.topology.cluster import GPU, NIC, Cluster
from sim.topology.connectivity import unreachable_pair
from sim.topology.loader import deep_merge
from sim.units import gbps_to_bytes_per_s

# name -> (GPUs, servers, NIC port Gb/s or None, GPUs per NIC)
SHIPPED = {
    "dgx-h100": (8, 1, None, None),
    "h100-leaf-spine": (32, 4, 400, 1),
    "h100-leaf-spine-oversub": (32, 4, 400, 1),
    "h800-leaf-spine": (16, 2, 400, 1),
    "a100-p4d": (16, 2, 100, 2),
    "ascend-910a": (64, 8, 100, 1),
    "fat-tree-3tier": (128, 16, 400, 1),
    "dgx1-cube-mesh": (8, 1, None, None),
}


@pytest.fixture(scope="module")
def shipped() -> dict[str, Cluster]:
    return {name: load_topology(name) for name in SHIPPED}


def gpus_of(c: Cluster) -> list[str]:
    return list(c.node_names[: c.num_gpus])


def nic_port(c: Cluster, gpu: str) -> tuple[str, str]:
    """(port node, leaf) of a GPU: the GPU itself or the NIC node it reaches over PCIe."""
    g = c.graph
    for v in g.successors(gpu):
        if g.edges[gpu, v]["tier"] == "nic":
            return gpu, v
    for v in g.successors(gpu):
        if g.nodes[v]["kind"] == NIC:
            (leaf,) = [w for w in g.successors(v) if g.edges[v, w]["tier"] == "nic"]
            return v, leaf
    raise AssertionError(f"{gpu} has no NIC")


def uplink_capacity(c: Cluster) -> float:
    g = c.graph
    return sum(
        d["bandwidth_Bps"]
        for u, v, d in g.edges(data=True)
        if g.nodes[u].get("role") == "leaf" and g.nodes[v].get("role") == "spine"
    )


# ----------------------------------------------------------------------------- catalog


def test_catalog_has_required_gpus_with_sane_figures() -> None:
    for name in ("h100_sxm", "h200", "a100_sxm", "ascend_910a", "v100_sxm"):
        spec = get_gpu(name)
        assert spec.peak_bf16_flops > 1e13 and spec.hbm_bandwidth_Bps > 1e11
        assert spec.nvlink_bandwidth_Bps > spec.pcie_bandwidth_Bps > 0
    assert get_gpu("h100_sxm").nvlink_bandwidth_Bps == 450e9
    assert get_gpu("ascend_910a").peak_bf16_flops == 320e12
    assert get_gpu("ascend_910a").hbm_bandwidth_Bps == 1.07e12
    assert list_gpus() == sorted(list_gpus())


def test_unknown_gpu_lists_valid_names() -> None:
    with pytest.raises(UserError, match="h100_sxm") as exc:
        get_gpu("b9000")
    assert "b9000" in str(exc.value)


# ----------------------------------------------------------------------------- shipped files


def test_every_shipped_file_is_expected_and_described() -> None:
    listed = dict(list_topologies())
    assert set(listed) == set(SHIPPED)
    assert all(desc for desc in listed.values())


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_topology_shape(shipped: dict[str, Cluster], name: str) -> None:
    c = shipped[name]
    gpus, servers, nic_gbps, per_nic = SHIPPED[name]
    assert (c.num_gpus, c.num_nodes) == (gpus, servers)
    assert unreachable_pair(c.graph) is None
    if nic_gbps is None:
        return
    ports: dict[str, int] = {}
    for gpu in gpus_of(c):
        port, leaf = nic_port(c, gpu)
        assert c.graph.edges[port, leaf]["bandwidth_Bps"] == gbps_to_bytes_per_s(nic_gbps)
        ports[port] = ports.get(port, 0) + 1
    assert set(ports.values()) == {per_nic}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_links_are_full_duplex(shipped: dict[str, Cluster], name: str) -> None:
    g = shipped[name].graph
    for u, v, d in g.edges(data=True):
        back = g.edges[v, u]  # KeyError if missing
        assert back["bandwidth_Bps"] == d["bandwidth_Bps"] and back["tier"] == d["tier"]


@pytest.mark.parametrize("name", ["h100-leaf-spine", "dgx1-cube-mesh", "fat-tree-3tier"])
def test_link_table_matches_graph(shipped: dict[str, Cluster], name: str) -> None:
    c = shipped[name]
    links = c.links
    assert len(links) == c.graph.number_of_edges() == len(links.index)
    for u, v, d in c.graph.edges(data=True):
        i = links.index[(c.node_index[u], c.node_index[v])]
        assert (c.node_names[links.src[i]], c.node_names[links.dst[i]]) == (u, v)
        assert links.capacity_Bps[i] == d["bandwidth_Bps"]
        assert links.latency_s[i] == d["latency_s"] and links.tier[i] == d["tier"]
    # GPUs come first, in rank order, with the rank tables the engine uses
    for rank, name_ in enumerate(gpus_of(c)):
        attrs = c.graph.nodes[name_]
        assert attrs["rank"] == rank
        assert (c.node_of[rank], c.local_rank[rank]) == (attrs["node"], attrs["local_rank"])


def test_dgx_h100_is_nvswitch_at_450_GBps(shipped: dict[str, Cluster]) -> None:
    g = shipped["dgx-h100"].graph
    assert {d["bandwidth_Bps"] for _, _, d in g.edges(data=True)} == {450e9}
    assert all(g.has_edge(f"n0.g{i}", "n0.nvsw") for i in range(8))


def test_dgx1_uses_six_nvlinks_per_gpu(shipped: dict[str, Cluster]) -> None:
    g = shipped["dgx1-cube-mesh"].graph
    for gpu in gpus_of(shipped["dgx1-cube-mesh"]):
        nvlink = sum(
            d["bandwidth_Bps"] for _, _, d in g.out_edges(gpu, data=True) if d["tier"] == "nvlink"
        )
        assert nvlink == pytest.approx(get_gpu("v100_sxm").nvlink_bandwidth_Bps)
    assert not g.has_edge("n0.g0", "n0.g5")  # no NVLink: reaches it through PCIe and the CPUs


# ----------------------------------------------------------------------------- overrides


def test_overrides_change_node_count() -> None:
    c = load_topology("h100-leaf-spine", {"nodes": 8})
    assert (c.num_gpus, c.num_nodes) == (64, 8)
    assert load_topology("ascend-910a", {"nodes": 32}).num_gpus == 256
    assert load_topology("h100-leaf-spine", {"nic.bandwidth_gbps": 200}).graph.edges[
        "n0.g0", "leaf.r0.0"
    ]["bandwidth_Bps"] == gbps_to_bytes_per_s(200)


def test_deep_merge_keeps_siblings() -> None:
    base = {"nic": {"bandwidth_gbps": 400, "latency_us": 1.0}, "nodes": 4}
    assert deep_merge(base, {"nic": {"latency_us": 2.0}}) == {
        "nic": {"bandwidth_gbps": 400, "latency_us": 2.0},
        "nodes": 4,
    }
    assert base["nic"]["latency_us"] == 1.0


def test_bad_override_names_the_field_and_its_origin() -> None:
    with pytest.raises(UserError) as exc:
        load_topology("h100-leaf-spine", {"nodes": 0})
    msg = str(exc.value)
    assert "h100-leaf-spine.yaml: nodes:" in msg and "(got 0)" in msg and "override" in msg


# ----------------------------------------------------------------------------- fat tree rules


def test_oversubscription_4_quarters_uplink_capacity(shipped: dict[str, Cluster]) -> None:
    full = uplink_capacity(shipped["h100-leaf-spine"])
    quarter = uplink_capacity(shipped["h100-leaf-spine-oversub"])
    assert quarter == pytest.approx(full / 4)
    # non-blocking: leaf uplink capacity equals the NIC capacity attached below it
    nics = sum(
        d["bandwidth_Bps"]
        for u, v, d in shipped["h100-leaf-spine"].graph.edges(data=True)
        if d["tier"] == "nic" and v.startswith("leaf")
    )
    assert full == pytest.approx(nics)
    doubled = load_topology("h100-leaf-spine", {"oversubscription": 2})
    assert uplink_capacity(doubled) == pytest.approx(full / 2)


def test_rail_optimized_puts_rail_r_on_rail_r_leaves() -> None:
    c = load_topology("h100-leaf-spine", {"nodes": 40})  # 2 leaf blocks per rail
    for gpu in gpus_of(c):
        r, s = c.graph.nodes[gpu]["local_rank"], c.graph.nodes[gpu]["node"]
        _, leaf = nic_port(c, gpu)
        assert c.graph.nodes[leaf]["rail"] == r
        assert leaf == f"leaf.r{r}.{s // 32}"


def test_non_rail_fills_leaves_in_order(shipped: dict[str, Cluster]) -> None:
    c = shipped["ascend-910a"]  # 32 ports per leaf = 4 servers
    for gpu in gpus_of(c):
        s = c.graph.nodes[gpu]["node"]
        assert nic_port(c, gpu)[1] == f"leaf.{s // 4}"


def test_three_tier_core_is_oversubscribed_2_to_1(shipped: dict[str, Cluster]) -> None:
    g = shipped["fat-tree-3tier"].graph
    for sp in (n for n, d in g.nodes(data=True) if d.get("role") == "spine"):
        down = sum(
            d["bandwidth_Bps"] for _, _, d in g.in_edges(sp, data=True) if d["tier"] == "leaf-spine"
        )
        up = sum(
            d["bandwidth_Bps"]
            for _, _, d in g.out_edges(sp, data=True)
            if d["tier"] == "spine-core"
        )
        assert up == pytest.approx(down / 2)
    pods = {d["pod"] for _, d in g.nodes(data=True) if d.get("role") == "leaf"}
    assert pods == {0, 1, 2, 3}


def test_fewer_nics_than_gpus_adds_nic_nodes_on_pcie(shipped: dict[str, Cluster]) -> None:
    g = shipped["a100-p4d"].graph
    for s in range(2):
        for k in range(4):
            nic = f"n{s}.nic{k}"
            assert g.nodes[nic]["kind"] == NIC
            gpus = sorted(u for u in g.predecessors(nic) if g.nodes[u]["kind"] == GPU)
            assert gpus == [f"n{s}.g{2 * k}", f"n{s}.g{2 * k + 1}"]
            assert g.edges[gpus[0], nic]["tier"] == "pcie"


def test_hccs_groups_have_no_direct_edge_across_groups(shipped: dict[str, Cluster]) -> None:
    g = shipped["ascend-910a"].graph
    for s in range(8):
        for i in range(8):
            for j in range(8):
                if i == j:
                    continue
                same = i // 4 == j // 4
                assert g.has_edge(f"n{s}.g{i}", f"n{s}.g{j}") == same
    # cross-group traffic has a path through the network, not inside the server
    assert unreachable_pair(g) is None
    alone = builders.hccs_groups(8, bandwidth_Bps=30e9, latency_s=0.5e-6)
    assert unreachable_pair(alone) is not None


def test_single_node_builder_is_pure_and_sized() -> None:
    a = builders.single_node(4, bandwidth_Bps=1e9, latency_s=1e-6)
    b = builders.single_node(4, bandwidth_Bps=1e9, latency_s=1e-6)
    assert nx.utils.graphs_equal(a, b) and a is not b
    assert a.number_of_edges() == 8 and a.nodes["n0.g3"]["rank"] == 3


# ----------------------------------------------------------------------------- connectivity


def test_gpus_do_not_forward_traffic() -> None:
    # a - b - c as a GPU chain: a cannot reach c because b is a GPU
    g = builders.explicit(
        [("a", 0, 0), ("b", 0, 1), ("c", 0, 2)],
        [builders.Link("a", "b", 1e9, 0.0), builders.Link("b", "c", 1e9, 0.0)],
    )
    assert unreachable_pair(g) in {("a", "c"), ("c", "a")}
    # a one-way link through a switch does not connect the way back
    g = builders.explicit(
        [("a", 0, 0), ("b", 0, 1)],
        [builders.Link("a", "sw", 1e9, 0.0, duplex=False), builders.Link("sw", "b", 1e9, 0.0)],
        switches=["sw"],
    )
    assert unreachable_pair(g) == ("b", "a")


# ----------------------------------------------------------------------------- user mistakes

SINGLE = "kind: single_node\ngpu: h100_sxm\n"
BAD = {
    "unknown_key": (
        SINGLE + "intra_node: {fabric: nvswitch, bandwith_gbps: 1}\n",
        "intra_node.bandwith_gbps: unknown field; allowed: fabric, bandwidth_gbps",
    ),
    "negative_bw": (
        "kind: leaf_spine\ngpu: h100_sxm\nnodes: 2\nhosts_per_leaf: 8\n"
        "nic: {bandwidth_gbps: -400}\n",
        "nic.bandwidth_gbps: must be > 0 (got -400)",
    ),
    "malformed": (SINGLE + "intra_node: {fabric: nvswitch\n  latency_us: 1\n", "line 4, column"),
    "duplicate_key": (SINGLE + "gpu: a100_sxm\n", "line 3"),
    "unknown_gpu": ("kind: single_node\ngpu: b9000\n", "gpu: unknown GPU; valid names: a100_sxm"),
    "unknown_kind": ("kind: torus\ngpu: h100_sxm\n",
                     "kind: must be one of single_node, fat_tree, leaf_spine, explicit "
                     "(got 'torus')"),
    "disconnected": (
        "kind: explicit\ngpu: v100_sxm\n"
        "gpus: [{name: a, node: 0, local_rank: 0}, {name: b, node: 0, local_rank: 1},\n"
        "       {name: c, node: 1, local_rank: 0}]\n"
        "switches: [sw]\n"
        "links: [{a: a, b: sw, bandwidth_gbps: 10}, {a: b, b: sw, bandwidth_gbps: 10}]\n",
        "links: topology is disconnected",
    ),
    "undeclared_node": (
        "kind: explicit\ngpu: v100_sxm\ngpus: [{name: a, node: 0, local_rank: 0}]\n"
        "links: [{a: a, b: nowhere, bandwidth_gbps: 10}]\n",
        "links[0].b: unknown node",
    ),
    "server_gap": (
        "kind: explicit\ngpu: v100_sxm\ngpus: [{name: a, node: 1, local_rank: 0}]\n",
        "gpus: server indices must be 0..N-1 without gaps (got [1])",
    ),
    "group_size": (
        SINGLE + "intra_node: {fabric: hccs_groups, group_size: 3}\n",
        "intra_node.group_size: must divide gpus_per_node",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_user_mistakes_name_file_and_field(tmp_path: Path, case: str) -> None:
    text, expected = BAD[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as exc:
        load_topology(path)
    msg = str(exc.value)
    assert msg.startswith(f"{path}: ") and expected in msg
    assert "\n" not in msg


def test_disconnected_message_names_two_gpus(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(BAD["disconnected"][0])
    with pytest.raises(UserError, match=r"no path from (a|b) to c|no path from c to (a|b)"):
        load_topology(path)


def test_unknown_name_lists_available() -> None:
    with pytest.raises(UserError) as exc:
        load_topology("no-such-cluster")
    msg = str(exc.value)
    assert "no-such-cluster" in msg and "h100-leaf-spine" in msg and "dgx-h100" in msg


def test_current_directory_shadows_repository(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "topologies").mkdir()
    mine = (repo_dir("topologies") / "dgx-h100.yaml").read_text()
    mine = mine.replace("gpus_per_node: 8", "gpus_per_node: 4")
    mine = mine.replace('description: "', 'description: "local ')
    (tmp_path / "topologies" / "dgx-h100.yaml").write_text(mine)
    monkeypatch.chdir(tmp_path)
    assert load_topology("dgx-h100").num_gpus == 4
    assert dict(list_topologies())["dgx-h100"].startswith("local")
    assert load_topology("h100-leaf-spine").num_gpus == 32  # still found in the repository
