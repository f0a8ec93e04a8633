"""Run every benchmark scenario: ``python -m bench [--quick] [--only inprocess,http,fallback,memory,front_door]``.

Writes bench/results/latest.json and bench/results/latest.md. Each claim is a ratio against a baseline measured in
the same run, checked against the targets of issues 6 and 13; a missed target is reported, not hidden. ``--only``
measures the scenarios named and keeps the others' last results (each scenario records when it was measured).
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


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def check(name: str, value: float | None, limit: float, kind: str) -> None:
        if value is None:
            return
        met = value <= limit if kind == "max" else value >= limit
        checks.append({"target": name, "value": value, "limit": limit, "kind": kind, "met": met})

    inproc = results.get("inprocess", {})
    at_1000 = inproc.get("sizes", {}).get("1000")
    if at_1000:
        check("in-process 1,000 resources: hook p50 / json.loads p50", at_1000["hook_vs_json_loads"], 3.0, "max")
        check("in-process 1,000 resources: naive p50 / hook p50", at_1000["naive_vs_hook"], 10.0, "min")
    check("in-process: 10,000-resource p50 / 1,000-resource p50", inproc.get("growth_10000_vs_1000"), 12.0, "max")
    http = results.get("http", {})
    check("HTTP: hook throughput / hello-world throughput", http.get("hook_vs_hello_throughput"), 0.5, "min")
    check("HTTP: hook p99 at 100 requests/s (ms)", http.get("at_100_rps", {}).get("p99_ms"), 50.0, "max")
    check(
        "fallback: hook p50 / one FHIR round trip p50",
        results.get("fallback", {}).get("hook_vs_one_round_trip"),
        1.3,
        "max",
    )
    check("memory: RSS growth over 10,000 calls", results.get("memory", {}).get("growth"), 0.10, "max")
    door = results.get("front_door", {})
    if door:
        check(
            "front door: p99 under 100 slow-header clients, nginx in front (ms)",
            door["nginx"]["under_slow_clients"]["p99_ms"],
            50.0,
            "max",
        )
        check("front door: nginx in front / gunicorn alone, throughput", door.get("throughput_ratio"), 0.8, "min")
    return checks


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# nxp2-cds benchmarks — {results['when']}", "", f"Machine: {results['machine']}", ""]
    when = {name: results[name].get("when", results["when"]) for name in SCENARIOS if name in results}
    if len(set(when.values())) > 1:
        lines += ["Measured at: " + ", ".join(f"{name} {at}" for name, at in when.items()), ""]
    lines += ["## Targets", "", "| target | measured | limit | met |", "|---|---|---|---|"]
    for c in results["targets"]:
        sign = "≤" if c["kind"] == "max" else "≥"
        lines.append(f"| {c['target']} | {c['value']} | {sign} {c['limit']} | {'yes' if c['met'] else '**no**'} |")
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
            "## HTTP (gunicorn, production configuration; load from a separate process)",
            "",
            "| route | throughput (req/s) | p50 ms | p99 ms | tool |",
            "|---|---|---|---|---|",
        ]
        for name in ("hook", "hello_world"):
            e = http[name]
            lines.append(f"| {name} | {e['throughput_rps']} | {e['p50_ms']} | {e['p99_ms']} | {e['tool']} |")
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
    if door:
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
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run; numbers are noisier)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    args = parser.parse_args()
    chosen = [s for s in args.only.split(",") if s]
    results: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}",
        "quick": args.quick,
    }
    previous = RESULTS / "latest.json"
    if set(chosen) < set(SCENARIOS) and previous.is_file():  # a partial run keeps the other scenarios' last results
        kept = json.loads(previous.read_text())
        for name in SCENARIOS:
            if name in kept and name not in chosen:
                results[name] = kept[name] | {"when": kept[name].get("when", kept["when"])}
    for name in chosen:
        started = time.monotonic()
        print(f"bench: {name} …", file=sys.stderr, flush=True)
        module = __import__(f"bench.{'http_scenario' if name == 'http' else name}", fromlist=["run"])
        results[name] = module.run(quick=args.quick)
        results[name]["elapsed_s"] = round(time.monotonic() - started, 1)
        results[name]["when"] = results["when"]
    results["targets"] = targets(results)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (RESULTS / "latest.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
