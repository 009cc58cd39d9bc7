"""``python -m benchmarks``: run the benchmarks, print a table, write results.json.

Options: ``--only startup,fleet,ingest,footprint`` picks benchmarks; ``--profile`` also
attaches py-spy to the server and agent, writes collapsed stacks to
benchmarks/profiles/ and times Ansible's phases (``ansible_phases``) (the figures of a profiled run carry py-spy's overhead: take the
figures from a run without it); ``--rounds`` sets the rounds of benchmark 1.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from benchmarks import ansible_phases, fleet, footprint, ingest, startup
from benchmarks.common import BENCH_DIR

ALL = ("startup", "fleet", "ingest", "footprint")


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "processor": platform.processor() or platform.machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--only", default=",".join(ALL))
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results.json")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    options = parser.parse_args()
    chosen = [name.strip() for name in options.only.split(",") if name.strip()]
    unknown = set(chosen) - set(ALL)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; choose from {ALL}")

    console = Console(width=170)
    workdir = Path(tempfile.mkdtemp(prefix="gamepipeline-bench-"))
    results: dict[str, Any] = {
        "machine": machine(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "profiled": options.profile,
    }
    began = time.monotonic()
    try:
        for name in chosen:
            console.print(f"[bold]benchmark: {name}[/bold]")
            t0 = time.monotonic()
            try:
                results[name] = _run_one(name, workdir, options)
            except Exception as err:
                console.print_exception()
                results[name] = {"error": f"{type(err).__name__}: {err}"}
            results[name]["wall_seconds"] = round(time.monotonic() - t0, 1)
            console.print(f"  done in {results[name]['wall_seconds']} s")
        if options.profile and "startup" in chosen:
            console.print("[bold]profile: Ansible's phases[/bold]")
            results["ansible_phases"] = ansible_phases.run(workdir)
    finally:
        results["total_seconds"] = round(time.monotonic() - began, 1)
        options.out.write_text(json.dumps(results, indent=2, ensure_ascii=False))
        if options.keep:
            console.print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    console.print(table(results))
    console.print(f"results written to {options.out}; {results['total_seconds']} s")


def _run_one(name: str, workdir: Path, options: argparse.Namespace) -> dict[str, Any]:
    if name == "startup":
        return startup.run(workdir, rounds=options.rounds, profile=options.profile)
    if name == "fleet":
        return fleet.run(workdir, profile=options.profile)
    if name == "ingest":
        return ingest.run(workdir, profile=options.profile)
    return footprint.run(workdir, profile=options.profile)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def table(results: dict[str, Any]) -> Table:
    """Every figure against its target."""
    t = Table(title="GamePipeline benchmarks", show_lines=False)
    for column in ("benchmark", "figure", "value", "baseline", "ratio", "target", "ok"):
        t.add_column(column)

    def row(
        bench: str,
        figure: str,
        value: Any,
        baseline: Any = "",
        ratio: Any = "",
        target: str = "",
        ok: bool | None = None,
    ) -> None:
        mark = "" if ok is None else ("[green]yes[/green]" if ok else "[red]no[/red]")
        t.add_row(bench, figure, _fmt(value), _fmt(baseline), _fmt(ratio), target, mark)

    for name in ALL:
        if "error" in results.get(name, {}):
            row(name, "error", results[name]["error"][:60], ok=False)
    for case in ("one_step", "three_step"):
        r = results.get("startup", {}).get(case)
        if not r or not r["rounds"]:
            continue
        p, d = r["pipeline"], r["docker_run"]
        target = "p50 ratio ≤ 3.0" if case == "one_step" else ""
        row(
            f"1 submit→running {case}",
            f"p50 ms ({r['rounds']} rounds)",
            p["p50_ms"],
            d["p50_ms"],
            r["p50_ratio"],
            target,
            r["p50_ratio"] <= 3.0 if case == "one_step" else None,
        )
        row("", "p95 ms", p["p95_ms"], d["p95_ms"], r["p95_ratio"])

    f = results.get("fleet")
    if f and "error" not in f:
        best = f.get("largest_passing") or {}
        ok = best.get("agents", 0) >= 10_000 and best.get("rate", 0) >= 200
        row(
            "2 fleet",
            "largest passing N @ rate/s",
            f"{best.get('agents', 0)} @ {best.get('rate', 0)}/s",
            target="10,000 @ 200/s, p99 ≤ 250 ms",
            ok=ok,
        )
        for grown in f.get("growth", []):
            failed = sum(grown.get("attempts_failed", {}).values())
            row(
                "",
                f"fleet of {grown['agents']}",
                f"{grown['registered']} registered in {grown['seconds']} s",
                f"{failed} failed attempts (retried)",
                f"cpu {grown['server']['cpu_percent_mean']}%",
                f"load {grown.get('load_average', 0):.1f}",
                grown["registered"] == grown["agents"],
            )
        for trial in f["trials"]:
            c = trial["counts"]
            lost = trial.get(
                "lost", c["submitted"] - c["completed"] + c["submit_errors"]
            )
            row(
                "",
                f"N={trial['agents']} @ {trial['rate']}/s",
                f"dispatch p50 {trial['dispatch']['p50_ms']} / "
                f"p99 {trial['dispatch']['p99_ms']} ms",
                f"hb rtt p50 {trial['heartbeat_rtt']['p50_ms']} / "
                f"p99 {trial['heartbeat_rtt']['p99_ms']} ms",
                f"cpu {trial['server']['cpu_percent_mean']}% "
                f"rss {trial['server']['rss_mib_max']} MiB",
                f"lost {lost}, streams lost {c['streams_lost']}, "
                f"load {trial.get('load_average', 0):.1f}",
                trial["passed"],
            )
    i = results.get("ingest")
    if i and "error" not in i:
        row(
            "3 ingestion",
            "UpdateStepStatus applied/s",
            i["persisted"]["per_second"],
            i["no_storage"]["per_second"],
            i["ratio"],
            "≥ 5,000/s and ratio ≥ 0.5",
            i["persisted"]["per_second"] >= 5000 and i["ratio"] >= 0.5,
        )
    fp = results.get("footprint")
    if fp and "error" not in fp:
        idle, busy = fp["idle"], fp["busy"]
        row(
            "4 agent footprint",
            "idle: agent CPU % / RSS MiB",
            f"{idle['agent']['cpu_percent_mean']} % / "
            f"{idle['agent']['rss_mib_max']} MiB",
        )
        row(
            "",
            "idle: tree (with spare) CPU % / PSS MiB",
            f"{idle['tree']['cpu_percent_mean']} % / {idle['tree']['pss_mib_max']} MiB",
        )
        row(
            "",
            f"{busy['pipelines']} running: agent CPU % / RSS",
            f"{busy['agent']['cpu_percent_mean']} % / "
            f"{busy['agent']['rss_mib_max']} MiB",
        )
        row(
            "",
            f"{busy['pipelines']} running: tree CPU % / PSS",
            f"{busy['tree']['cpu_percent_mean']} % / {busy['tree']['pss_mib_max']} MiB",
            ratio=f"{busy['completed']}/{busy['pipelines']} completed, "
            f"last after {busy['last_done_s']} s",
        )
    return t


if __name__ == "__main__":
    main()
