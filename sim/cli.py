"""The ``moesim`` command line: parse, load, call, write. Heavy modules load inside commands.

Every user mistake ends as one line ``error: <message>`` on stderr and exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from sim import __version__
from sim.errors import UserError
from sim.solve.registry import ADMISSION_SOLVERS, PLACEMENT_SOLVERS

USER_ERROR_EXIT = 2


def _load_cluster(source: Path, scenario: Any) -> Any:
    """The scenario's topology with its overrides; errors also name the scenario file."""
    from sim.scenario import topology_overrides
    from sim.topology import load_topology

    try:
        return load_topology(*topology_overrides(scenario))
    except UserError as e:
        raise UserError(f"{source}: topology: {e}") from None


def _size(cluster: Any) -> str:
    nodes = cluster.num_nodes
    return f"{cluster.num_gpus} GPUs on {nodes} node{'s' if nodes != 1 else ''}"


@click.group(
    invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="moesim")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """moe-sim: simulate Mixture-of-Experts workloads on GPU clusters."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@cli.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option(
    "--set", "sets", multiple=True, metavar="KEY=VALUE",
    help="Override a scenario field, e.g. --set fabric.ecmp=hash (repeatable).",
)
@click.option(
    "--out", type=click.Path(path_type=Path),
    help="Output directory (default: runs/<scenario>-<YYYYmmdd-HHMMSS>/).",
)
def run(scenario: Path, sets: tuple[str, ...], out: Path | None) -> None:
    """Run SCENARIO: print an nccl-tests style table and write summary.json."""
    from sim.runs import rundir as output
    from sim.runs.simulate import simulate
    from sim.scenario import load_scenario

    sc = load_scenario(scenario, sets)  # input mistakes surface before the engine is imported
    if out is not None:
        output.check_out_dir(out)
    done = simulate(sc, _load_cluster(scenario, sc), str(scenario), _progress())
    click.echo(done.text)
    path = output.write_run(out or output.default_run_dir(sc.name), done.files)
    click.echo(f"wrote {', '.join(str(path / f) for f in done.files)}", err=True)


@cli.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--routers", "routers", default="", metavar="VARIANTS",
              help="Comma-separated NAME[+ir][+fr][(key=value,...)], e.g. "
                   "'switch,hash,locmoe(locality_bias=2)'; the first is the baseline.")
@click.option("--sweep", metavar="FIELD=V1,V2,...",
              help="Also sweep one scenario field, e.g. moe.moe_expert_capacity_factor=0.5,1,2.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a field of the base scenario (repeatable).")
@click.option("--out", type=click.Path(path_type=Path),
              help="Output directory (default: runs/<scenario>-compare-<YYYYmmdd-HHMMSS>/).")
def compare(scenario: Path, routers: str, sweep: str | None, sets: tuple[str, ...],
            out: Path | None) -> None:
    """Run SCENARIO (training or serving) under several variants and/or a sweep: print a
    side-by-side table and write compare.csv, compare.json and compare.html (plotly)."""
    from sim.runs import rundir as output
    from sim.runs.compare import columns, format_table, parse_sweep, split_variants
    from sim.runs.compare import compare as run_compare

    variants = split_variants(routers) if routers.strip() else []
    key, _ = parse_sweep(sweep)
    if out is not None:
        output.check_out_dir(out)
    rows = run_compare(scenario, variants, sets, sweep, progress=_progress())
    click.echo(format_table(rows, key))
    from sim.report.compare import comparison
    from sim.scenario import load_scenario

    name = load_scenario(scenario, sets).name
    html = comparison(rows, key).to_html(include_plotlyjs="inline", full_html=True)
    files = {"compare.csv": output.csv_text(rows, columns(rows[0]["kind"], key)),
             "compare.json": rows, "compare.html": html}
    path = output.write_run(out or output.default_run_dir(f"{name}-compare"), files)
    click.echo(f"wrote {', '.join(str(path / f) for f in files)}", err=True)


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="Sweep directory (default: runs/<sweep name>-sweep/). A directory of the same "
                   "sweep is resumed: finished runs are skipped.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Local worker processes (default: one per CPU; 1 runs in this process).")
@click.option("--scheduler", metavar="ADDRESS",
              help="Run on the Dask cluster of this scheduler instead, e.g. tcp://host:8786.")
@click.option("--retry-failed", "retry_failed", is_flag=True,
              help="Run failed runs again (default: a rerun keeps their error rows).")
def sweep(file: Path, out: Path | None, workers: int | None, scheduler: str | None,
          retry_failed: bool) -> int:
    """Run the sweep FILE (a scenario, overrides, a grid, seeds; see README): one row per run
    in sweep.csv, sweep.jsonl, sweep.parquet, a figure in sweep.html. Exit status 1 when a
    run failed (the others still run)."""
    from sim.runs import rundir as output
    from sim.runs.sweep import format_table, load_sweep_spec, run_sweep

    spec = load_sweep_spec(file)  # every run validated before anything is written
    out = out or Path("runs") / f"{spec.name}-sweep"
    result = run_sweep(spec, out, workers, scheduler, retry_failed, _progress(),
                       log=lambda line: click.echo(line, err=True))
    click.echo(format_table(result.rows))
    from sim.report.sweep import sweep_figure

    html = sweep_figure(result.rows, spec.fields).to_html(include_plotlyjs="inline",
                                                          full_html=True)
    files = [*result.files, output.write_file(out / "sweep.html", html)]
    click.echo(f"wrote {', '.join(map(str, files))} and {out / 'runs'}/", err=True)
    if result.failed:
        click.echo(f"error: {result.failed} of {len(result.rows)} runs failed (see the error "
                   f"column of {out / 'sweep.csv'}; --retry-failed runs them again)", err=True)
        return 1
    return 0


@cli.command()
@click.argument("logs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--topology", required=True, metavar="NAME|FILE",
              help="The measured cluster's topology (its nodes: follows each log's servers).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a topology field, e.g. --set nic.bandwidth_gbps=200 (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="The profile to write (YAML); use it with comm_profile: FILE.")
@click.option("--name", default=None, help="The profile's name (default: the --out file's stem).")
@click.option("--start", metavar="PROFILE", default=None,
              help="Start from this profile's values (and keep those the logs cannot fit).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the global search.")
@click.option("--maxiter", type=click.IntRange(min=1), default=120, show_default=True,
              help="Generations of the global search (more: slower, closer).")
@click.option("--restarts", type=click.IntRange(min=1), default=1, show_default=True,
              help="Fits from seeds SEED, SEED+1, ...; the one of least RMS log error is kept "
                   "(the objective has several minima).")
@click.option("--fit", "only", metavar="NAME,...", default=None,
              help="Fit only these parameters, e.g. launch_us,link_efficiency.nvlink "
                   "(default: every one the logs can tell apart).")
def calibrate(logs: tuple[Path, ...], topology: str, sets: tuple[str, ...], out: Path,
              name: str | None, start: str | None, seed: int, maxiter: int, restarts: int,
              only: str | None) -> None:
    """Fit a communication profile to nccl-tests output (LOGS: logs as nccl-tests prints them,
    or measurement CSVs): print a before/after table and write the profile."""
    from sim.calibrate.run import calibrate as run_calibrate
    from sim.calibrate.run import profile_yaml, table
    from sim.runs import rundir

    overrides = _topology_sets(sets)
    _check_answer_path(out)
    names = None if only is None else [n.strip() for n in only.split(",") if n.strip()]
    result = run_calibrate(logs, topology, overrides, start, seed, maxiter, only=names,
                           restarts=restarts)
    click.echo(table(result.rows))
    flags = "".join(f" --{k} {v}" for k, v, default in (
        ("seed", seed, 0), ("maxiter", maxiter, 120), ("restarts", restarts, 1)) if v != default)
    text = profile_yaml(result.fit.profile, logs, topology, result.fit, name or out.stem, flags)
    rundir.write_file(out, text)
    click.echo(f"wrote {out}", err=True)


def _topology_sets(sets: tuple[str, ...]) -> dict:
    """``KEY=VALUE`` topology overrides (values read as YAML; dotted keys nest)."""
    import yaml

    out: dict = {}
    for arg in sets:
        key, sep, raw = arg.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {arg}: expected KEY=VALUE such as nodes=4")
        try:
            out[key.strip()] = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise UserError(f"--set {arg}: value is not valid YAML") from None
    return out


def _check_answer_path(out: Path) -> None:
    """Refuse an --out that is a directory or lies in a missing directory (before any work)."""
    if out.exists() and out.is_dir():
        raise UserError(f"{out}: is a directory; --out names a file")
    if not out.parent.exists():
        raise UserError(f"{out}: directory {out.parent} does not exist")


@cli.group()
def solve() -> None:
    """Solve expert placement or priority flow admission & routing (ILP, GA, greedy)."""


def _write_answer(out: Path, text: str) -> None:
    """Write ``text`` to ``out`` atomically (a temporary sibling renamed into place)."""
    from sim.runs import rundir as output

    out = Path(out)
    _check_answer_path(out)
    output.write_file(out, text)
    click.echo(f"wrote {out}", err=True)


def _report(answer: Any, objective: float) -> None:
    gap = "-" if answer.gap is None else f"{answer.gap:.2%}"
    bound = "-" if answer.bound is None else f"{answer.bound:.6g}"
    click.echo(f"solver {answer.solver}: {answer.status}, objective {objective:.6g}, "
               f"bound {bound}, gap {gap}, {answer.wall_s:.2f} s")


def _solver_options(solvers):
    """``--solver`` (one of the ``solvers`` registry) and ``--time-limit``, shared by the solve
    commands."""
    def options(command):
        command = click.option("--time-limit", "time_limit", type=float, default=60.0,
                               show_default=True, help="ILP / GA budget, seconds.")(command)
        return click.option("--solver", type=click.Choice(solvers.names()), default="ilp",
                            show_default=True)(command)
    return options


@solve.command(name="placement")
@click.argument("scenario", type=click.Path(path_type=Path))
@_solver_options(PLACEMENT_SOLVERS)
@click.option("--seed", type=int, default=None, help="GA seed (default: the scenario's).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a scenario field (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Answer file (JSON); a scenario uses it with placement: {file: ...}.")
def solve_placement(scenario: Path, solver: str, time_limit: float, seed: int | None,
                    sets: tuple[str, ...], out: Path) -> None:
    """Place the experts of training SCENARIO on its first expert-parallel group."""
    from sim.scenario import load_scenario
    from sim.solve.apply import placement_problem, solve_placement_problem

    sc = load_scenario(scenario, sets)
    if sc.kind != "training":
        raise UserError(f"{scenario}: solve placement needs a training scenario (model: and moe:)")
    problem = placement_problem(sc, _load_cluster(scenario, sc))
    answer = solve_placement_problem(problem, solver, time_limit,
                                     sc.seed if seed is None else seed)
    _report(answer, answer.cost["total"])
    _write_answer(out, answer.to_json())


@solve.command(name="admission")
@click.argument("problem", type=click.Path(path_type=Path))
@_solver_options(ADMISSION_SOLVERS)
@click.option("--seed", type=int, default=0, show_default=True, help="GA seed.")
@click.option("--backend", type=click.Choice(["cbc", "highs"]), default="cbc", show_default=True,
              help="ILP solver behind PuLP.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Answer file (JSON).")
def solve_admission(problem: Path, solver: str, time_limit: float, seed: int, backend: str,
                    out: Path) -> None:
    """Admit and route the prioritised flows of PROBLEM (JSON, see docs/solvers.md)."""
    from sim.solve.apply import solve_admission_problem
    from sim.solve.pfar import Problem

    prob = Problem.from_json(problem)
    answer = solve_admission_problem(prob, solver, time_limit, seed, backend)
    _report(answer, answer.objective)
    _write_answer(out, answer.to_json())


@solve.command(name="generate")
@click.option("--nodes", type=click.IntRange(2, 1000), default=25, show_default=True,
              help="Random instance: nodes.")
@click.option("--flows", type=click.IntRange(1, 1_000_000), default=2000, show_default=True,
              help="Random instance: flows.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random instance seed.")
@click.option("--scenario", type=click.Path(path_type=Path),
              help="Instead: the dispatch All-to-All of this training scenario on its cluster.")
@click.option("--layer", type=int, default=0, show_default=True,
              help="With --scenario: the MoE layer (0-based) whose dispatch to admit.")
@click.option("--window-us", "window_us", type=float, default=None,
              help="With --scenario: the time window the admitted chunks must fit in, us "
                   "(default: the busiest GPU's own inter-node time).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="With --scenario: override a scenario field (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Problem file (JSON).")
@click.pass_context
def solve_generate(ctx: click.Context, nodes: int, flows: int, seed: int,
                   scenario: Path | None, layer: int, window_us: float | None,
                   sets: tuple[str, ...], out: Path) -> None:
    """Write a flow admission instance: semi-random (PFAR-style topology and flows), or one
    All-to-All of a training scenario (--scenario)."""
    from click.core import ParameterSource

    random_opts = [f"--{n}" for n in ("nodes", "flows", "seed")
                   if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE]
    if scenario is None:
        if sets or window_us is not None or ctx.get_parameter_source("layer") == \
                ParameterSource.COMMANDLINE:
            raise UserError("solve generate: --layer, --window-us and --set need --scenario")
        from sim.solve.pfar import generate

        prob = generate(nodes, flows, seed)
    else:
        if random_opts:
            raise UserError(f"solve generate: {random_opts[0]} describes a random instance; "
                            "leave it out with --scenario")
        from sim.scenario import load_scenario
        from sim.solve.apply import admission_problem

        sc = load_scenario(scenario, sets)
        if sc.kind != "training":
            raise UserError(f"{scenario}: solve generate --scenario needs a training scenario "
                            "(model: and moe:)")
        window_s = None if window_us is None else window_us * 1e-6
        prob, window_s = admission_problem(sc, _load_cluster(scenario, sc), layer, window_s,
                                           str(scenario))
    window = "" if scenario is None else f", window {window_s * 1e6:.6g} us"
    click.echo(f"instance: {len(prob.nodes)} nodes, {len(prob.links)} links, "
               f"{len(prob.flows)} flows{window}")
    _write_answer(out, prob.to_json())


def progress_line(stage: str, done: int, total: int, elapsed_s: float, width: int = 24) -> str:
    """One progress bar line, e.g. ``    runs [#########...............] 3/8  12 s, ~20 s left``
    (the estimate once something is done)."""
    filled = round(width * done / total) if total else width
    eta = f", ~{elapsed_s * (total - done) / done:.0f} s left" if 0 < done < total else ""
    return (f"{stage:>8} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}  "
            f"{elapsed_s:.0f} s{eta}")


def _progress():
    """A progress bar on stderr when it is a terminal (:func:`progress_line`), else nothing."""
    import sys
    import time

    if not sys.stderr.isatty():
        return None
    starts: dict[str, float] = {}
    last = [time.monotonic()]  # a stage starts when the previous report (or the command) did

    def show(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        start = starts.setdefault(stage, last[0])
        last[0] = now
        line = progress_line(stage, done, total, now - start)
        click.echo(f"\r{line}   ", err=True, nl=False)
        if stage in ("backward", "runs") and done == total:
            click.echo("", err=True)

    return show


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
def validate(file: Path) -> None:
    """Check a scenario file (and its topology) or a topology file."""
    from sim.inputs import read_yaml
    from sim.scenario import load_scenario

    data = read_yaml(file)
    if isinstance(data, dict) and "kind" in data:
        from sim.topology import validate_topology

        cluster = validate_topology(file)
        click.echo(f"ok: {file} (topology {cluster.name}: {_size(cluster)})")
        return
    if not (isinstance(data, dict) and ({"topology", "benchmark", "model"} & data.keys())):
        raise UserError(
            f"{file}: neither a scenario (with topology: and benchmark: or model:) "
            "nor a topology file (with kind:)"
        )
    sc = load_scenario(file)
    cluster = _load_cluster(file, sc)
    b, d = sc.benchmark, sc.dispatch
    what = (f"{sc.kind}, {b.collective}/{b.algorithm or 'library choice'}" if b is not None
            else f"{sc.kind}, {d.dispatcher}, {d.num_experts} experts top-{d.topk}"
            if d is not None
            else f"{sc.kind}, {sc.moe.num_experts} experts, router {sc.moe.router.name}")
    click.echo(f"ok: {file} (scenario {sc.name}: {what} on {cluster.name}, {_size(cluster)})")


@cli.command(name="list")
def list_() -> None:
    """List the shipped topologies, collectives with their algorithms, routers and pipeline
    schedules."""
    from sim.routing import ROUTERS
    from sim.scenario.schema import COLLECTIVES
    from sim.topology import list_topologies
    from sim.training.schedules import SCHEDULES

    click.echo("topologies:")
    for name, description in list_topologies():
        click.echo(f"  {name:<26} {description}")
    click.echo("collectives (algorithms, default first):")
    for collective, algorithms in COLLECTIVES.items():
        click.echo(f"  {collective:<26} {', '.join(algorithms)}")
    click.echo("routers (moe.router.name):")
    click.echo(f"  {', '.join(ROUTERS.names())}")
    click.echo("pipeline schedules (training.pipeline_schedule):")
    click.echo(f"  {', '.join(SCHEDULES.names())}")


def _fail(message: str, status: int = USER_ERROR_EXIT) -> None:
    one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    click.echo(f"error: {one_line}", err=True)
    sys.exit(status)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``moesim`` console script."""
    try:
        rv = cli.main(args=argv, prog_name="moesim", standalone_mode=False)
    except UserError as e:
        _fail(str(e))
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        _fail(e.format_message() + hint)
    except click.ClickException as e:
        _fail(e.format_message())
    except click.Abort:
        _fail("interrupted", 130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
