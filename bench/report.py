"""BENCHMARKS.md from the benchmarks' result documents: per workload, each method's median and spread, the ratios
to the baselines, the target and whether it holds, the machine, and the command that reproduces it.

    python -m bench.report RESULTS.json [--out BENCHMARKS.md]

`bench.run_all` (what `make bench` runs) writes RESULTS.json, then calls `render`. A workload is a dict:

    {"id": "1", "title": ..., "command": ..., "unit": "s", "better": "lower",
     "figures": [{"method": ..., "role": "orchard" | "baseline" | "profile", "values": [...], "note": ...}, ...],
     "ratios": [{"orchard": METHOD, "baseline": METHOD}],           # orchard's median over the baseline's
     "target": {"text": ..., "met": true | false | null, "why": ...},  # why: the profile, when not met
     "tables": [{"title": ..., "columns": [...], "rows": [[...], ...]}],  # further figures, as measured
     "notes": [...]}
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float]) -> str:
    """min–max and the relative half-range, the spread the report quotes beside each median."""
    if len(values) < 2:
        return "one run"
    low, high = min(values), max(values)
    middle = median(values)
    return f"{_number(low)}–{_number(high)} (±{50 * (high - low) / middle:.0f}%)" if middle else "—"


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def ratio(workload: dict, orchard: str, baseline: str) -> float:
    """Orchard's median over the baseline's, as a speed: above 1 Orchard is faster, whichever the unit."""
    figures = {figure["method"]: median(figure["values"]) for figure in workload["figures"]}
    mine, theirs = figures[orchard], figures[baseline]
    return theirs / mine if workload.get("better", "lower") == "lower" else mine / theirs


def _verdict(target: dict) -> str:
    met = target.get("met")
    return "met" if met is True else "not met" if met is False else "not judged"


def render_workload(workload: dict) -> str:
    unit = workload.get("unit", "s")
    better = "lower" if workload.get("better", "lower") == "lower" else "higher"
    lines = [f"## {workload['id']}. {workload['title']}", ""]
    if workload.get("figures"):
        lines += [f"| method | role | median ({unit}, {better} is better) | spread (min–max) | runs | note |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for figure in workload["figures"]:
            lines.append(f"| {figure['method']} | {figure['role']} | {_number(median(figure['values']))} | "
                         f"{spread(figure['values'])} | {len(figure['values'])} | {figure.get('note', '')} |")
        lines.append("")
    if workload.get("ratios"):
        lines.append("Speed against each baseline (above 1: Orchard faster):")
        lines.append("")
        for pair in workload["ratios"]:
            lines.append(f"- {pair['orchard']} vs {pair['baseline']}: "
                         f"**{ratio(workload, pair['orchard'], pair['baseline']):.2f}×**")
        lines.append("")
    for table in workload.get("tables", []):
        lines += [f"{table['title']}:", "", "| " + " | ".join(table["columns"]) + " |",
                  "|" + " --- |" * len(table["columns"])]
        lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in table["rows"]]
        lines.append("")
    target = workload.get("target")
    if target:
        lines.append(f"Target: {target['text']} — **{_verdict(target)}**.")
        if target.get("why"):
            lines += ["", target["why"]]
        lines.append("")
    for note in workload.get("notes", []):
        lines.append(f"- {note}")
    if workload.get("notes"):
        lines.append("")
    lines += ["Reproduce:", "", "```bash", workload["command"], "```", ""]
    return "\n".join(lines)


def _cell(value) -> str:
    return _number(value) if isinstance(value, float) else str(value)


def summary_row(workload: dict) -> str:
    target = workload.get("target") or {}
    ratios = "; ".join(f"{p['orchard']} / {p['baseline']} {ratio(workload, p['orchard'], p['baseline']):.2f}×"
                       for p in workload.get("ratios", [])[:3])
    return f"| {workload['id']} | {workload['title']} | {ratios or '—'} | {target.get('text', '—')} | " \
           f"{_verdict(target) if target else '—'} |"


def render(results: dict) -> str:
    machine = results["machine"]
    workloads = sorted(results["workloads"], key=lambda w: (int(re.match(r"\d*", str(w["id"])).group() or 99),
                                                            str(w["id"])))
    seconds = results.get("seconds") or sum(results.get("seconds_per_benchmark", {}).values())
    when = results.get("finished", "a run that had not finished")
    lines = [
        "# Benchmarks",
        "",
        f"Written by `make bench` ({results['command']}) on {when}, in "
        f"{seconds / 60:.1f} minutes. Machine: {machine['cpus']} cores, {machine['memory_gib']} GiB of "
        f"memory, {machine.get('platform', '')}; Python {machine.get('python', '')}, Ray {machine.get('ray', '')}.",
        "",
        *(["Run again since, with `--update` (the same command and sizes): "
           + ", ".join(f"{name} on {when}" for name, when in results["updated"].items()) + ".", ""]
          if results.get("updated") else []),
        "Both sides of every comparison ran in this run, on the same data, taking turns. Medians of the runs "
        "shown, with their spread: this machine is shared and its speed varies by hour, so the ratios are the "
        "figures to compare, not the absolute times.",
        "",
        "| # | workload | speed against the baselines (above 1: Orchard faster) | target | |",
        "| --- | --- | --- | --- | --- |",
        *(summary_row(workload) for workload in workloads),
        "",
    ]
    missing = results.get("failed", {})
    if missing:
        lines += ["Workloads that did not finish in this run:", ""]
        lines += [f"- {name}: {reason}" for name, reason in missing.items()]
        lines.append("")
    lines += [render_workload(workload) for workload in workloads]
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path)
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    args = parser.parse_args()
    args.out.write_text(render(json.loads(args.results.read_text())))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
