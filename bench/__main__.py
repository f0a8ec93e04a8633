"""Run every benchmark scenario: ``python -m bench [--quick] [--only inprocess,http,fallback,memory,front_door]
[--cql DIR]``.

Writes bench/results/latest.json and bench/results/latest.md. Each claim is a ratio against a baseline measured in
the same run: issue 16's goals first (each measured / goal / met, "met" computed here), then the older targets that
still stand (issues 6 and 13). ``--only`` measures the scenarios named and keeps the others' last results (each
scenario records when it was measured). ``--cql DIR`` adds the CQL-engine baseline from DIR, a copy of the CQL peer
(``d=$(mktemp -d) && cp -r ../shared/peers/cql-engine "$d"``, then ``--cql "$d/cql-engine"``); without it the CQL
goals read "not measured (run with --cql DIR)" (a CQL result is never kept from an earlier run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("inprocess", "http", "fallback", "memory", "front_door")
CQL_HINT = "not measured (run with --cql DIR)"
MODULES = {"http": "http_scenario", "cql": "cql_peer"}


def _why_missing(results: dict[str, Any], scenario: str) -> str:
    found = results.get(scenario)
    if scenario == "cql" and not found:
        return CQL_HINT
    if not found:
        return f"not measured (run the {scenario} scenario)"
    if "skipped" in found:
        return f"not measured ({found['skipped']})"
    if "error" in found:
        return f"not measured ({found['error']})"
    return f"not measured (the last {scenario} result predates this goal: run that scenario again)"


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every goal and target, measured or not, with ``met`` computed from the measured value and the limit."""
    rows: list[dict[str, Any]] = []

    def check(issue: int, scenario: str, name: str, value: float | None, limit: float, kind: str) -> None:
        row: dict[str, Any] = {"issue": issue, "target": name, "value": value, "limit": limit, "kind": kind}
        if value is None:
            row |= {"met": None, "note": _why_missing(results, scenario)}
        else:
            row["met"] = value <= limit if kind == "max" else value >= limit
        rows.append(row)

    cql = results.get("cql", {})
    per_request = cql.get("modes", {}).get(cql.get("goal_mode", ""), {})
    for size, limit in (("100", 40.0), ("1000", 80.0)):
        check(
            16,
            "cql",
            f"HTTP p50, {int(size):,} Observations: CQL engine ÷ service",
            per_request.get(size, {}).get("peer_vs_service_p50"),
            limit,
            "min",
        )
    sizes = results.get("inprocess", {}).get("sizes", {})
    for size, limit in (("1000", 1.5), ("10", 10.0)):
        check(
            16,
            "inprocess",
            f"in-process {int(size):,} resources: hook p50 ÷ json.loads p50 of the same body",
            sizes.get(size, {}).get("hook_vs_json_loads"),
            limit,
            "max",
        )
    check(
        16,
        "inprocess",
        "in-process, linear: 10,000-resource p50 ÷ 1,000-resource p50",
        results.get("inprocess", {}).get("growth_10000_vs_1000"),
        11.0,
        "max",
    )
    http = results.get("http", {})
    check(
        16,
        "http",
        "HTTP throughput: hook ÷ a route on the same server that only reads and parses the same body",
        http.get("hook_vs_parse_throughput"),
        0.5,
        "min",
    )
    peak = results.get("memory", {}).get("peak_per_request", {})
    check(
        16,
        "memory",
        f"peak memory of one request ÷ its body size ({peak.get('body_bytes', 0) / 1e6:.1f} MB body)"
        if peak
        else "peak memory of one request ÷ its body size",
        peak.get("peak_growth_vs_body"),
        3.0,
        "max",
    )
    check(
        6,
        "inprocess",
        "in-process 1,000 resources: naive p50 ÷ hook p50",
        sizes.get("1000", {}).get("naive_vs_hook"),
        10.0,
        "min",
    )
    check(6, "http", "HTTP: hook p99 at 100 requests/s (ms)", http.get("at_100_rps", {}).get("p99_ms"), 50.0, "max")
    check(
        6,
        "fallback",
        "fallback: hook p50 ÷ one FHIR round trip p50",
        results.get("fallback", {}).get("hook_vs_one_round_trip"),
        1.3,
        "max",
    )
    calls = results.get("memory", {}).get("calls", 10_000)
    check(6, "memory", f"memory: RSS growth over {calls:,} calls", results.get("memory", {}).get("growth"), 0.10, "max")
    door = results.get("front_door", {})
    check(
        13,
        "front_door",
        "front door: p99 under 100 slow-header clients, nginx in front (ms)",
        door.get("nginx", {}).get("under_slow_clients", {}).get("p99_ms"),
        50.0,
        "max",
    )
    check(
        13,
        "front_door",
        "front door: nginx in front ÷ gunicorn alone, throughput",
        door.get("throughput_ratio"),
        0.8,
        "min",
    )
    return rows


def _goal_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| goal | measured | goal | met |", "|---|---|---|---|"]
    for c in rows:
        sign = "≤" if c["kind"] == "max" else "≥"
        measured = c["value"] if c["value"] is not None else c["note"]
        met = "—" if c["met"] is None else "yes" if c["met"] else "**no**"
        lines.append(f"| {c['target']} | {measured} | {sign} {c['limit']:g} | {met} |")
    return lines


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# nxp2-cds benchmarks — {results['when']}", "", f"Machine: {results['machine']}", ""]
    if "load_average_before" in results:
        lines += [
            f"Load average (1 min) on {os.cpu_count()} CPUs: {results['load_average_before']} at the start, "
            f"{results.get('load_average_after')} at the end of the run.",
            "",
        ]
    when = {name: results[name].get("when", results["when"]) for name in (*SCENARIOS, "cql") if name in results}
    if len(set(when.values())) > 1:
        lines += ["Measured at: " + ", ".join(f"{name} {at}" for name, at in when.items()), ""]
    rows = results["goals"]
    met = [c for c in rows if c["issue"] == 16 and c["met"]]
    measured = [c for c in rows if c["issue"] == 16 and c["met"] is not None]
    lines += ["## Goals of issue 16 (measured / goal / met)", ""]
    lines += _goal_lines([c for c in rows if c["issue"] == 16])
    lines += ["", f"{len(met)} of {len(measured)} measured goals met.", ""]
    lines += ["## Targets of issues 6 and 13 that still stand", ""]
    lines += _goal_lines([c for c in rows if c["issue"] != 16])
    lines += _cql_lines(results.get("cql"))
    inproc = results.get("inprocess")
    if inproc:
        lines += [
            "",
            "## In-process (Flask test client), p50 / p99 ms",
            "",
            "| resources | body KB | hook | json.loads | naive (validate all) | hook ÷ json.loads | naive ÷ hook |",
            "|---|---|---|---|---|---|---|",
        ]
        for size, e in inproc["sizes"].items():
            lines.append(
                f"| {size} | {e['body_bytes'] // 1024} | {e['hook']['p50_ms']} / {e['hook']['p99_ms']} | "
                f"{e['json_loads']['p50_ms']} / {e['json_loads']['p99_ms']} | {e['naive']['p50_ms']} / "
                f"{e['naive']['p99_ms']} | {e['hook_vs_json_loads']} | {e['naive_vs_hook']} |"
            )
        lines += [
            "",
            "Early exit (no JDM, no anti-NXP2 data) against an eligible chart, p50 ms:",
            "",
            "| resources | eligible | not eligible | ratio |",
            "|---|---|---|---|",
        ]
        for size, e in inproc["early_exit"].items():
            lines.append(
                f"| {size} | {e['eligible']['p50_ms']} | {e['not_eligible']['p50_ms']} | "
                f"{e['not_eligible_vs_eligible']} |"
            )
    http = results.get("http")
    if http:
        lines += [
            "",
            f"## HTTP (gunicorn as `nxp2-cds serve` runs it, {http['prefetch_resources']} resources; load from a "
            "separate process)",
            "",
            "| route | throughput (req/s) | p50 ms | p99 ms | tool |",
            "|---|---|---|---|---|",
        ]
        labels = {"hook": "hook", "parse_only": "read and parse only (json.loads), same server", "hello_world": "hello"}
        for name, label in labels.items():
            if name in http:
                e = http[name]
                lines.append(f"| {label} | {e['throughput_rps']} | {e['p50_ms']} | {e['p99_ms']} | {e['tool']} |")
        e = http["at_100_rps"]
        lines.append(
            f"| hook at a fixed 100 req/s ({e['requests']} requests) | {e['throughput_rps']} | {e['p50_ms']} | "
            f"{e['p99_ms']} | {e['tool']} |"
        )
    fallback = results.get("fallback")
    if fallback and "skipped" not in fallback:
        lines += [
            "",
            f"## Fallback (FHIR server adds {fallback['fhir_delay_ms']} ms per request)",
            "",
            "| | p50 ms | p99 ms |",
            "|---|---|---|",
            f"| hook, prefetch absent | {fallback['hook']['p50_ms']} | {fallback['hook']['p99_ms']} |",
            f"| one round trip to the FHIR server | {fallback['one_round_trip']['p50_ms']} | "
            f"{fallback['one_round_trip']['p99_ms']} |",
            "",
            f"FHIR requests per hook call: {fallback['fhir_requests_per_hook_call']}",
        ]
    door = results.get("front_door")
    if door and "skipped" in door:
        lines += ["", f"## Front door: not measured ({door['skipped']})"]
    elif door:
        lines += [
            "",
            f"## Front door (`nxp2-cds serve`, {door['workers']} workers x {door['threads']} threads, the same run)",
            "",
            "| front door | hook throughput (req/s, 16 connections) | p50 / p99 ms | discovery throughput (req/s) | "
            "hook p50 / p99 ms at 100 req/s | hook p50 / p99 ms under 100 slow-header clients | failed or timed out "
            "(of) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, label in (("gunicorn", "gunicorn alone (before)"), ("nginx", "nginx in front of gunicorn")):
            e = door[name]
            closed, fixed, slow = e["throughput"], e["at_100_rps"], e["under_slow_clients"]
            lines.append(
                f"| {label} | {closed['throughput_rps']} | {closed['p50_ms']} / {closed['p99_ms']} | "
                f"{e['discovery_throughput']['throughput_rps']} | "
                f"{fixed['p50_ms']} / {fixed['p99_ms']} | {slow['p50_ms']} / {slow['p99_ms']} | "
                f"{slow['failed_or_timed_out']} ({slow['sent']}) |"
            )
        lines += [
            "",
            f"nginx ÷ gunicorn alone: hook throughput {door['throughput_ratio']}, discovery throughput "
            f"{door['discovery_throughput_ratio']}, hook p99 at 100 req/s {door['p99_at_100_rps_ratio']}. "
            f"Load average {door.get('load_average_before')} before, {door.get('load_average_after')} after "
            f"(on {os.cpu_count()} CPUs: other work on the machine slows both alike).",
        ]
    memory = results.get("memory")
    if memory:
        lines += [
            "",
            "## Memory",
            "",
            f"RSS {memory['rss_before_kb']} KB before, {memory['rss_after_kb']} KB after "
            f"{memory['calls']} hook calls: growth {memory['growth'] * 100:.1f}%.",
        ]
        peak = memory.get("peak_per_request")
        if peak:
            lines += [
                "",
                f"One {peak['body_bytes'] / 1e6:.1f} MB request ({peak['resources']:,} resources) to a warm worker "
                f"(gunicorn, 1 worker, production threads): its resident set rose by "
                f"{', '.join(f'{kb / 1024:.0f}' for kb in peak['peak_growth_kb'])} MB above where it stood "
                f"({peak['method']}); the largest is {peak['peak_growth_vs_body']}x the body.",
            ]
    return "\n".join(lines) + "\n"


def _cql_lines(cql: dict[str, Any] | None) -> list[str]:
    if not cql:
        return ["", f"## CQL engine: {CQL_HINT}"]
    if "error" in cql:
        return ["", f"## CQL engine: not measured ({cql['error']})"]
    v = cql["versions"]
    packages = ", ".join(f"{name} {version}" for name, version in v["installed"].items())
    lines = [
        "",
        "## CQL engine beside the service (HTTP, the same payloads, the same client)",
        "",
        f"The CQL peer (Node {v['node']}; {packages}) and the service (gunicorn as `nxp2-cds serve` runs it), each "
        f"on 127.0.0.1: {cql['method']}. Each request: a Patient, 5 Conditions and N Observations (bench.workload). "
        f"The goals use the peer's default mode ({cql['goal_mode']}: a fresh PatientSource per request, as AHRQ "
        "CDS Connect's CQL Services do); `shared` is its tuned mode. p99 of few samples is close to the slowest.",
        "",
        "| peer mode | Observations | body KB | CQL engine p50 / p99 ms (n) | its own CQL time p50 ms | "
        "service p50 / p99 ms (n) | CQL engine ÷ service, p50 |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, sizes in cql["modes"].items():
        for size, e in sizes.items():
            peer, service = e["peer"], e["service"]
            lines.append(
                f"| {mode} | {int(size):,} | {e['body_bytes'] // 1024} | {peer['p50_ms']} / {peer['p99_ms']} "
                f"({peer['n']}) | {peer['server_cql_p50_ms']} | {service['p50_ms']} / {service['p99_ms']} "
                f"({service['n']}) | {e['peer_vs_service_p50']} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run; numbers are noisier)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument(
        "--cql",
        metavar="DIR",
        type=Path,
        help="also measure the CQL-engine baseline from DIR, a copy of the CQL peer "
        '(d=$(mktemp -d) && cp -r ../shared/peers/cql-engine "$d"; then --cql "$d/cql-engine")',
    )
    args = parser.parse_args()
    chosen = [s for s in args.only.split(",") if s]
    unknown = sorted(set(chosen) - set(SCENARIOS) - {"cql"})
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)} (of {', '.join(SCENARIOS)})")
    if args.cql is not None:
        from bench.cql_peer import PeerError, check_folder

        try:
            check_folder(args.cql)  # a wrong folder fails now, not after the other scenarios
        except PeerError as exc:
            parser.error(str(exc))
        chosen = [s for s in chosen if s != "cql"] + ["cql"]
    elif "cql" in chosen:
        parser.error("the cql scenario needs --cql DIR")
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
        "quick": args.quick,
        "load_average_before": round(os.getloadavg()[0], 2),  # the machine is shared: other work slows every side
    }
    previous = RESULTS / "latest.json"
    if set(SCENARIOS) - set(chosen) and previous.is_file():  # a partial run keeps the other scenarios' last results
        kept = json.loads(previous.read_text())
        for name in SCENARIOS:  # never "cql": its goals come from a run given --cql
            if name in kept and name not in chosen:
                results[name] = kept[name] | {"when": kept[name].get("when", kept["when"])}
    failed = False
    for name in chosen:
        started = time.monotonic()
        print(f"bench: {name} …", file=sys.stderr, flush=True)
        module = __import__(f"bench.{MODULES.get(name, name)}", fromlist=["run"])
        if name == "cql":
            try:
                results[name] = module.run(args.cql, quick=args.quick)
            except module.PeerError as exc:
                print(f"bench: the CQL peer failed: {exc}", file=sys.stderr)
                results[name], failed = {"error": f"the CQL peer failed: {exc}"}, True
        else:
            results[name] = module.run(quick=args.quick)
        results[name]["elapsed_s"] = round(time.monotonic() - started, 1)
        results[name]["when"] = results["when"]
    results["load_average_after"] = round(os.getloadavg()[0], 2)
    results["goals"] = goals(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (RESULTS / "latest.md").write_text(text)
    print(text)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
