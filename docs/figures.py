"""Draws the monitoring figures of the README: `python docs/figures.py` (a local Ray; about a minute).

The fruit classifier is trained on a day of fruit, then six days of requests are logged with their outcomes: three
days like the training data, then golden apples (orange in colour, nearly as smooth as oranges) arrive, 10%, 30%
and 50% of the fruit. `orchard monitor` then shows the live accuracy falling and the inputs drifting.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]


def main() -> None:
    from fruit.generate import fruit_frame, write_fruit

    from features.catalog import get_view
    from features.datasets import RandomSplit, create_training_dataset
    from features.pipeline import run_feature_pipeline
    from monitoring.monitor import MonitorSettings, monitor
    from monitoring.outcomes import check_outcomes, store_outcomes
    from monitoring.report import write_report
    from orchard.config import OrchardConfig
    from orchard.projects import activate, parse_entries
    from orchard.registry import ModelRegistry
    from orchard.runtime import ray_session
    from orchard.storage import Storage
    from serve.prediction_log import PredictionLog
    from training.predictor import Predictor
    from training.trainer import train_model

    folder = tempfile.mkdtemp(prefix="orchard-figures-")
    projects = parse_entries([str(ROOT / "examples" / "fruit")], base=ROOT, source="docs/figures.py")
    config = OrchardConfig.from_sources(env={}, storage=folder, num_cpus=2, projects=[p.folder for p in projects])
    activate(config.projects)
    storage = Storage(folder)
    with ray_session(config, quiet=True):
        write_fruit(storage, rows=1500, seed=7)
        run_feature_pipeline(storage, get_view("fruit_classification").label.group)
        create_training_dataset(storage, get_view("fruit_classification"), RandomSplit(seed=0))
        train_model(storage, "fruit_classifier", alias="production")
        predictor = Predictor.load(ModelRegistry(storage), "fruit_classifier")
        log = PredictionLog(storage)
        outcomes = []
        start = datetime(2026, 11, 23, 8, tzinfo=timezone.utc)
        inputs = ["red", "green", "blue", "weight_g", "diameter_mm", "smoothness"]
        for day, golden in enumerate((0.0, 0.0, 0.0, 0.1, 0.3, 0.5)):
            frame = fruit_frame(300, seed=100 + day, golden_share=golden)
            for number in range(0, 300, 10):
                part = frame.iloc[number:number + 10]
                rows = part[inputs].to_dict("records")
                request_id = f"day{day}-{number}"
                log.record("fruit_classifier", 1, request_id, rows, predictor.predict(rows),
                           time=start + timedelta(days=day, minutes=number))
                outcomes += [{"request_id": request_id, "index": i, "outcome": label}
                             for i, label in enumerate(part["label"])]
        log.close()
        signature = ModelRegistry(storage).get("fruit_classifier").card["signature"]
        store_outcomes(storage, "fruit_classifier", check_outcomes(signature, outcomes))
        report = write_report(storage, monitor(storage, "fruit_classifier", MonitorSettings()))
    for name, target in (("drift.png", "monitoring_drift.png"), ("performance.png", "monitoring_performance.png")):
        shutil.copyfile(storage.path(f"{report['folder']}/{name}"), ROOT / "docs" / target)
    for window in report["versions"]["1"]["windows"]:
        accuracy = window["performance"]["metrics"]["accuracy"]
        psi = {name: round(result["psi"], 2) for name, result in window["drift"].items()}
        print(f"{window['start'][:10]}: accuracy {accuracy:.3f}; drifted {window['drifted_features']}; PSI {psi}")
    print("\n".join(report["alerts"]))
    shutil.rmtree(folder)


if __name__ == "__main__":
    main()
