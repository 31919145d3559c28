"""How `orchard train` routes its options to each model, before anything trains."""

from __future__ import annotations

import contextlib

import pytest
from typer.testing import CliRunner

import pipelines.train
from pipelines.cli import app
from training import trainer as training


@pytest.fixture()
def captured(monkeypatch):
    """The keyword arguments each model would be trained with; Ray is not started."""
    calls = {}

    def train_model(storage, name, **options):
        calls[name] = options
        return {"model": name, "registered": True, "version": 1, "alias": None, "summary": "",
                "dataset": {"view": "v", "version": 1}, "seconds": 0.0}

    monkeypatch.setattr(training, "train_model", train_model)
    monkeypatch.setattr(pipelines.train, "ray_session", lambda *_, **__: contextlib.nullcontext())
    return calls


def test_gpu_and_epochs_reach_the_networks_only(tmp_path, captured):
    result = CliRunner().invoke(app, ["--storage", str(tmp_path), "train", "fruit_classifier", "fruit_dnn_classifier",
                                      "--gpu", "--epochs", "2", "--workers", "3", "--json"])
    assert result.exit_code == 0, result.output
    assert captured["fruit_classifier"] == {"dataset": None, "workers": 3, "force": False, "alias": None,
                                            "gpu": False, "epochs": None}
    assert captured["fruit_dnn_classifier"] == {"dataset": None, "workers": 3, "force": False, "alias": None,
                                                "gpu": True, "epochs": 2}


def test_a_later_models_failure_is_reported_after_the_earlier_results(tmp_path, monkeypatch, captured):
    trained = training.train_model

    def failing_for_networks(storage, name, **options):
        if name.endswith("dnn_classifier"):
            raise RuntimeError("the worker group could not start")
        return trained(storage, name, **options)

    monkeypatch.setattr(training, "train_model", failing_for_networks)
    result = CliRunner().invoke(app, ["--storage", str(tmp_path), "train", "fruit_classifier", "fruit_dnn_classifier"])
    assert result.exit_code == 1
    assert "fruit_classifier version 1" in result.stdout
    assert "fruit_dnn_classifier: NOT registered. RuntimeError: the worker group could not start" in result.stdout


def test_an_object_store_without_conditional_writes_is_refused_before_training(captured):
    result = CliRunner().invoke(app, ["--storage", "gs://bucket/orchard", "train", "fruit_classifier"])
    assert result.exit_code == 2
    assert "an s3:// root for its atomic version claims" in " ".join(result.output.replace("│", " ").split())
    assert captured == {}
