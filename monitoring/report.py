"""A monitoring report on storage: `report.json`, `report.html` with PNG plots, and Prometheus gauges.

Each run writes a new folder `<storage>/monitoring/<model>/reports/<UTC time>/` and then points
`<storage>/monitoring/<model>/latest.json` at it, so a reader never sees a half-written report. `metrics.prom`
holds the gauges in Prometheus' text format (as node_exporter's textfile collector reads them); the Serve app
also serves every model's latest gauges at `/metrics/monitoring`.
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from typing import Any, Iterable

from matplotlib.ticker import MaxNLocator

from monitoring.monitor import MONITORING
from orchard.storage import Storage
from training.plots import _new_figure, _png_bytes, draw_confusion_matrix

PERFORMANCE_PNG, CONFUSION_PNG, DRIFT_PNG = "performance.png", "confusion_over_time.png", "drift.png"
MAX_CONFUSION_WINDOWS = 4


def latest_report(storage: Storage, model: str) -> tuple[str, dict] | None:
    """(the report's folder, the report) of the model's latest monitoring run, or None."""
    pointer = f"{MONITORING}/{model}/latest.json"
    if not storage.exists(pointer):
        return None
    folder = storage.read_json(pointer)["folder"]
    return folder, storage.read_json(f"{folder}/report.json")


def latest_reports_text(storage: Storage, models: Iterable[str]) -> str:
    """The Prometheus gauges of each model's latest report, together (models never monitored are left out)."""
    reports = [found[1] for found in (latest_report(storage, model) for model in models) if found]
    return prometheus_text(reports)


def write_report(storage: Storage, report: dict) -> dict:
    """Store the report with its page, plots and gauges; returns it as stored (with its `folder`, relative to the
    storage root, and the names of its `plots`)."""
    model = report["model"]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    folder = f"{MONITORING}/{model}/reports/{stamp}"
    plots = {}
    version = _main_version(report)
    if version is not None:
        section = report["versions"][version]
        plots[PERFORMANCE_PNG] = performance_png(model, version, section)
        if section["task"] == "classification":
            confusion = confusion_over_time_png(model, version, section)
            if confusion is not None:
                plots[CONFUSION_PNG] = confusion
        plots[DRIFT_PNG] = drift_png(model, version, section, report["thresholds"]["psi"])
    for name, data in plots.items():
        storage.write_bytes(f"{folder}/{name}", data)
    report = {**report, "plots": sorted(plots), "folder": folder}
    storage.write_bytes(f"{folder}/metrics.prom", prometheus_text([report]).encode())
    storage.write_bytes(f"{folder}/report.html", report_html(report).encode())
    storage.write_json(f"{folder}/report.json", report)
    storage.write_json(f"{MONITORING}/{model}/latest.json", {"folder": folder, "generated_at": report["generated_at"]})
    return report


def _main_version(report: dict) -> str | None:
    """The version that answered the most requests in the period (shadow answers aside): the one the plots show."""
    versions = report["versions"]
    if not versions:
        return None

    def served(version: str) -> int:
        overall = versions[version]["overall"]
        return overall["predictions"] - overall.get("shadow_predictions", 0)

    return max(versions, key=lambda v: (served(v), int(v)))


def _starts(section: dict) -> list[datetime]:
    return [datetime.fromisoformat(w["start"]) for w in section["windows"]]


def performance_png(model: str, version: str, section: dict) -> bytes:
    """Predictions against outcomes over time: the live metrics per window beside the baseline's, and the share
    of predictions that got an outcome."""
    figure = _new_figure()
    axes = figure.add_subplot()
    windows = section["windows"]
    times = _starts(section)
    classification = section["task"] == "classification"
    names = ("accuracy", "macro_f1") if classification else ("mae", "rmse")
    for name in names:
        points = [(t, w["performance"]["metrics"][name]) for t, w in zip(times, windows) if w["performance"]]
        if points:
            axes.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"live {name}")
    compared = "accuracy" if classification else "mae"
    baseline = [(t, w["performance"]["baseline"][compared]) for t, w in zip(times, windows) if w["performance"]]
    if baseline:
        axes.plot([p[0] for p in baseline], [p[1] for p in baseline], linestyle="--", color="grey",
                  label=f"baseline {compared}")
    share = axes.twinx()
    share.bar(times, [w["outcome_share"] or 0 for w in windows], alpha=0.15, color="tab:green",
              width=max(section_width(times), 1e-3), label="share with outcome")
    share.set_ylim(0, 1.05)
    share.set_ylabel("share of predictions with an outcome", parse_math=False)
    axes.set_title(f"{model} v{version}: live performance per window", parse_math=False)
    axes.set_ylabel("metric", parse_math=False)
    axes.grid(True, alpha=0.3)
    handles = axes.get_legend_handles_labels()
    extra = share.get_legend_handles_labels()
    if handles[0] or extra[0]:
        axes.legend(handles[0] + extra[0], handles[1] + extra[1], loc="best")
    figure.autofmt_xdate()
    return _png_bytes(figure)


def section_width(times: list[datetime]) -> float:
    """A bar width in days (matplotlib's date unit): 80% of the gap between windows."""
    if len(times) < 2:
        return 0.5
    return 0.8 * min((b - a).total_seconds() for a, b in zip(times, times[1:])) / 86400


def confusion_over_time_png(model: str, version: str, section: dict) -> bytes | None:
    """The confusion matrices of the last windows that had outcomes, side by side."""
    with_outcomes = [w for w in section["windows"] if w["performance"]][-MAX_CONFUSION_WINDOWS:]
    if not with_outcomes:
        return None
    figure = _new_figure()
    figure.set_size_inches(3.2 * len(with_outcomes), 3.4)
    grid = figure.subplots(1, len(with_outcomes), squeeze=False)[0]
    for axes, window in zip(grid, with_outcomes):
        draw_confusion_matrix(axes, window["performance"]["metrics"]["confusion_matrix"], section["classes"],
                              title=window["start"][:16].replace("T", " "), scale=0.7, true_label="outcome")
    figure.suptitle(f"{model} v{version}: confusion matrix per window", fontsize=9)
    return _png_bytes(figure)


def drift_png(model: str, version: str, section: dict, psi_threshold: float) -> bytes:
    """PSI per feature (and of the predictions) per window, with the threshold."""
    figure = _new_figure()
    axes = figure.add_subplot()
    times = _starts(section)
    series = {name: [w["drift"][name] for w in section["windows"]] for name in section["overall"]["drift"]}
    series["(predictions)"] = [w["prediction_drift"] for w in section["windows"]]
    unjudged = False
    for name, results in series.items():
        points = [(t, r["psi"], r.get("psi_judged", False)) for t, r in zip(times, results) if r.get("psi") is not None]
        if not points:
            continue
        line, = axes.plot([p[0] for p in points], [p[1] for p in points], linewidth=1.2, label=name,
                          linestyle="--" if name == "(predictions)" else "-")
        # A filled marker where there were rows enough to judge PSI, a hollow one where there were not.
        for judged in (True, False):
            chosen = [p for p in points if p[2] is judged]
            unjudged |= bool(chosen) and not judged
            if chosen:
                axes.plot([p[0] for p in chosen], [p[1] for p in chosen], linestyle="none", marker="o",
                          markersize=5, color=line.get_color(), markerfacecolor=line.get_color() if judged else "white")
    axes.axhline(psi_threshold, color="red", linewidth=1, label=f"threshold {psi_threshold:g}")
    axes.set_title(f"{model} v{version}: PSI against the training split"
                   + ("\nhollow: too few rows to judge" if unjudged else ""), parse_math=False)
    axes.set_ylabel("population stability index", parse_math=False)
    axes.grid(True, alpha=0.3)
    axes.yaxis.set_major_locator(MaxNLocator(nbins=6))
    legend = axes.legend(fontsize=7, ncols=2)
    for text in legend.get_texts():
        text.set_parse_math(False)
    figure.autofmt_xdate()
    return _png_bytes(figure)


# -- Prometheus


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


GAUGES = {
    "orchard_monitor_predictions": "Predictions logged in the monitored period (shadow answers included).",
    "orchard_monitor_shadow_predictions": "Of those, a challenger's answers in shadow, never returned.",
    "orchard_monitor_outcome_share": "Share of the period's predictions that got an outcome.",
    "orchard_monitor_metric": "Live metric over the period's predictions with outcomes.",
    "orchard_monitor_feature_psi": "Population stability index of a feature against the training split.",
    "orchard_monitor_feature_drifted": "1 if the feature drifted by the configured thresholds, else 0.",
    "orchard_monitor_prediction_psi": "Population stability index of the predictions against the training target.",
    "orchard_monitor_drifted_features": "Features that drifted in the period.",
    "orchard_monitor_generated_timestamp_seconds": "When the report was computed.",
}


def prometheus_text(reports: Iterable[dict]) -> str:
    """Gauges of the reports' overall sections in the Prometheus text exposition format (0.0.4)."""
    samples: dict[str, list[str]] = {name: [] for name in GAUGES}

    def add(name: str, labels: dict, value: Any) -> None:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return
        shown = ",".join(f'{key}="{_label(item)}"' for key, item in labels.items())
        samples[name].append(f"{name}{{{shown}}} {float(value):.10g}")

    for report in reports:
        model = report["model"]
        add("orchard_monitor_generated_timestamp_seconds", {"model": model},
            datetime.fromisoformat(report["generated_at"]).timestamp())
        for version, section in report["versions"].items():
            overall, base = section["overall"], {"model": model, "version": version}
            add("orchard_monitor_predictions", base, overall["predictions"])
            add("orchard_monitor_shadow_predictions", base, overall.get("shadow_predictions", 0))
            add("orchard_monitor_outcome_share", base, overall["outcome_share"])
            if overall["performance"]:
                for metric in ("accuracy", "macro_f1", "mae", "rmse"):
                    add("orchard_monitor_metric", {**base, "metric": metric},
                        overall["performance"]["metrics"].get(metric))
            for feature, result in overall["drift"].items():
                add("orchard_monitor_feature_psi", {**base, "feature": feature}, result.get("psi"))
                if result["drifted"] is not None:
                    add("orchard_monitor_feature_drifted", {**base, "feature": feature}, int(result["drifted"]))
            add("orchard_monitor_prediction_psi", base, overall["prediction_drift"].get("psi"))
            add("orchard_monitor_drifted_features", base, len(overall["drifted_features"]))
    lines = []
    for name, help_text in GAUGES.items():
        if samples[name]:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", *samples[name]]
    return "\n".join(lines) + "\n" if lines else ""


# -- the page


def _number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return html.escape(str(value))


def report_html(report: dict) -> str:
    """A self-contained page (the plots are the PNG files beside it)."""
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Monitoring: {e(report['model'])}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}th{background:#f4f4f4}"
             "td:first-child,th:first-child{text-align:left}.alert{color:#a00}.drifted{background:#fdd}"
             "img{max-width:100%;display:block;margin:1em 0}</style></head><body>",
             f"<h1>Monitoring: {e(report['model'])}</h1>",
             f"<p>Computed {e(report['generated_at'])} over {report['log_files']} log file(s); window "
             f"{report['window'] / 3600:g} h; outcomes received {report['outcomes_received']}, matching no "
             f"prediction {report['outcomes_unmatched']}; malformed log lines {report['malformed_log_lines']}.</p>"]
    if report["alerts"]:
        parts.append("<h2>Alerts</h2><ul>" + "".join(f"<li class='alert'>{e(a)}</li>" for a in report["alerts"])
                     + "</ul>")
    else:
        parts.append("<p>No alerts.</p>")
    for name in report.get("plots", []):
        parts.append(f"<img src='{e(name)}' alt='{e(name)}'>")
    for version, section in report["versions"].items():
        reference = section["reference"]
        parts.append(f"<h2>Version {e(version)}</h2><p>Reference: training split of "
                     f"{e(str(reference['dataset']['view']))}"
                     f" dataset version {e(str(reference['dataset']['version']))} ({reference['rows']} rows).</p>")
        metric_names = ("accuracy", "macro_f1") if section["task"] == "classification" else ("mae", "rmse")
        parts.append("<table><tr><th>window</th><th>predictions (in shadow)</th><th>with outcome</th>"
                     + "".join(f"<th>{m}</th>" for m in metric_names) + "<th>drifted features</th></tr>")
        for window in [*section["windows"], {**section["overall"], "start": "whole period"}]:
            performance = window["performance"]
            cells = [_number(performance["metrics"][m]) if performance else "–" for m in metric_names]
            parts.append(f"<tr><td>{e(window['start'])}</td><td>{window['predictions']} "
                         f"({window.get('shadow_predictions', 0)})</td>"
                         f"<td>{window['with_outcome']} ({_number(window['outcome_share'])})</td>"
                         + "".join(f"<td>{c}</td>" for c in cells)
                         + f"<td>{e(', '.join(window['drifted_features'])) or '–'}</td></tr>")
        parts.append("</table><h3>Drift over the whole period</h3><table><tr><th>feature</th><th>kind</th>"
                     "<th>rows</th><th>PSI</th><th>test</th><th>value</th><th>p-value</th><th>null rate</th>"
                     "<th>out of range</th><th>drifted</th></tr>")
        drift = {**section["overall"]["drift"], "(predictions)": section["overall"]["prediction_drift"]}
        for name, result in drift.items():
            test = result.get("test", {})
            parts.append(f"<tr class='{'drifted' if result['drifted'] else ''}'><td>{e(name)}</td>"
                         f"<td>{result['kind']}</td><td>{result['rows']}</td><td>{_number(result.get('psi'))}</td>"
                         f"<td>{e(test.get('method', '–'))}</td><td>{_number(test.get('value'))}</td>"
                         f"<td>{_number(test.get('p_value'))}</td><td>{_number(result['null_rate'])}</td>"
                         f"<td>{_number(result['out_of_range'])}</td>"
                         f"<td>{_number(result['drifted']) if result['drifted'] is not None else 'too few rows'}"
                         "</td></tr>")
        parts.append("</table>")
    parts.append("<p><a href='report.json'>report.json</a> · <a href='metrics.prom'>metrics.prom</a></p>"
                     "</body></html>")
    return "".join(parts)
