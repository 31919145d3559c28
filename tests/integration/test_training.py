"""Training scikit-learn models from training datasets: grid search on Ray, evaluation, registration, CLI."""

from __future__ import annotations

import json

import fruit.models
import pytest
from typer.testing import CliRunner

from orchard.registry import ModelRegistry
from orchard.storage import Storage
from pipelines.cli import app
from tests.conftest import prepare_domains
from training import ModelSpec, SklearnFlavor
from training.catalog import get_spec
from training.predictor import Predictor
from training.trainer import BelowBaselineError, train_model

pytestmark = pytest.mark.ray

PNG = b"\x89PNG\r\n\x1a\n"
FRUIT_INPUTS = ["red", "green", "blue", "weight_g", "diameter_mm", "smoothness"]


@pytest.fixture(scope="module")
def own_storage(ray_cluster, tmp_path_factory) -> Storage:
    """A storage root of this module's own, for tests that register extra versions."""
    storage = Storage(str(tmp_path_factory.mktemp("training")))
    prepare_domains(storage, fruit_rows=600, surf_rows=300)
    return storage


def _text(result) -> str:
    """The command's output with the error box's frame and line breaks taken out."""
    return " ".join(result.output.replace("│", " ").split())


def test_both_models_are_registered_as_version_one_in_production(trained_models):
    storage, results = trained_models
    registry = ModelRegistry(storage)
    for name in ("fruit_classifier", "surf_regressor"):
        assert (results[name]["version"], results[name]["registered"]) == (1, True)
        assert registry.aliases(name) == {"production": 1}


def test_models_beat_their_trivial_baselines_on_the_test_split(trained_models):
    storage, _ = trained_models
    registry = ModelRegistry(storage)
    fruit = registry.get("fruit_classifier", 1).card["metrics"]
    surf = registry.get("surf_regressor", 1).card["metrics"]
    assert fruit["compared_on"] == "accuracy" and fruit["beats_baseline"]
    assert fruit["test"]["accuracy"] > fruit["baseline"]["accuracy"] + 0.2
    assert fruit["test"]["macro_f1"] > 0.9
    matrix = fruit["test"]["confusion_matrix"]
    assert len(matrix) == 2 and sum(map(sum, matrix)) == fruit["test"]["n"]
    assert surf["compared_on"] == "rmse" and surf["beats_baseline"]
    assert surf["test"]["rmse"] < surf["baseline"]["rmse"] / 2
    assert surf["test"]["r2"] > 0.7 and surf["test"]["mae"] < surf["baseline"]["mae"]


def test_the_grid_search_tries_every_candidate_and_keeps_the_best_on_validation(trained_models):
    storage, _ = trained_models
    card = ModelRegistry(storage).get("fruit_classifier", 1).card
    spec = get_spec("fruit_classifier")
    assert [entry["params"] for entry in card["search"]] == spec.flavor.candidates()
    best = max(entry["validation"]["accuracy"] for entry in card["search"])
    chosen = next(e for e in card["search"] if e["params"] == card["hyperparameters"])
    assert chosen["validation"]["accuracy"] == best


def test_card_records_signature_transforms_plots_and_lineage(trained_models):
    storage, _ = trained_models
    registry = ModelRegistry(storage)
    card = registry.get("surf_regressor", 1).card
    signature = card["signature"]
    assert [(i["name"], i["datatype"]) for i in signature["inputs"]] == [
        ("facing_deg", "FP64"), ("bottom", "BYTES"), ("swell_height_m", "FP64"), ("swell_period_s", "FP64"),
        ("swell_direction_deg", "FP64")]  # buoy_id is excluded
    assert "bottom=__other__" in signature["model_inputs"]
    assert signature["outputs"] == [{"name": "surf_height_m", "datatype": "FP64", "shape": [-1]}]
    lineage = card["lineage"]
    assert (lineage["view"], lineage["dataset_version"]) == ("surf_height:1", 1)
    assert set(lineage["table_versions"]) == {"surf_observations:1", "beaches:1", "buoy_readings:1"}
    assert lineage["code_version"] and len(lineage["code_version"].removesuffix("+dirty")) == 40
    assert lineage["versions"]["ray"].startswith("2.60") and "scikit-learn" in lineage["versions"]
    assert lineage["model_spec"]["estimator"] == "sklearn.tree.DecisionTreeRegressor"
    assert lineage["rows"]["train"] > 0 and lineage["forced_below_baseline"] is False
    assert registry.read_file("surf_regressor", 1, "learning_curve.png").startswith(PNG)
    assert registry.read_file("fruit_classifier", 1, "confusion_matrix.png").startswith(PNG)
    stored = json.loads(registry.read_file("surf_regressor", 1, "transforms.json"))
    assert stored["format"] and [t["column"] for t in stored["transforms"]][:1] == ["bottom"]
    points = card["learning_curve"]["points"]
    assert [p["rows"] for p in points] == sorted(p["rows"] for p in points) and points[-1]["rows"] == lineage["rows"]["train"]


def test_the_registered_classifier_tells_red_apples_from_oranges(trained_models):
    storage, _ = trained_models
    predictor = Predictor.load(ModelRegistry(storage), "fruit_classifier")
    assert predictor.feature_names == FRUIT_INPUTS
    red_apple = {"red": 0.82, "green": 0.26, "blue": 0.22, "weight_g": 190.0, "diameter_mm": 77.0, "smoothness": 0.9}
    orange = {"red": 0.95, "green": 0.58, "blue": 0.12, "weight_g": 240.0, "diameter_mm": 80.0, "smoothness": 0.3}
    green_apple = {"red": 0.50, "green": 0.78, "blue": 0.28, "weight_g": 170.0, "diameter_mm": 74.0, "smoothness": 0.9}
    assert [p["label"] for p in predictor.predict([red_apple, orange, green_apple])] == ["apple", "orange", "apple"]


def _overlaps(search: list[dict]) -> int:
    """How many pairs of candidate tasks ran at the same time."""
    spans = sorted(entry["ran"] for entry in search)
    return sum(1 for i, (_, end) in enumerate(spans) for start, _ in spans[i + 1:] if start < end)


def test_workers_caps_the_candidate_tasks_running_at_once_and_the_model_stays_the_same(own_storage):
    registry = ModelRegistry(own_storage)
    parallel = train_model(own_storage, "fruit_classifier")
    one_at_a_time = train_model(own_storage, "fruit_classifier", workers=1)
    assert one_at_a_time["version"] == parallel["version"] + 1
    assert one_at_a_time["hyperparameters"] == parallel["hyperparameters"]
    assert one_at_a_time["metrics"] == parallel["metrics"]
    capped = registry.get("fruit_classifier", one_at_a_time["version"]).card
    assert capped["search_tasks"] == {"candidates": 8, "limit": 1, "most_in_flight": 1}
    assert _overlaps(capped["search"]) == 0  # each task ended before the next was submitted
    # Uncapped, every candidate is submitted at once (Ray runs them as CPUs allow; fits this small may not overlap).
    assert registry.get("fruit_classifier", parallel["version"]).card["search_tasks"]["most_in_flight"] == 8


def _minority_guess(name: str) -> ModelSpec:
    return ModelSpec(name=name, view="fruit_classification", task="classification",
                     flavor=SklearnFlavor("sklearn.dummy.DummyClassifier", params={"strategy": "constant", "constant": 1}))


def test_a_model_below_its_baseline_is_refused_unless_forced(own_storage, monkeypatch):
    # Always answering the minority class (index 1 of apple/orange in this data) cannot beat the majority class.
    spec = _minority_guess("minority_guess")
    monkeypatch.setattr(fruit.models, "MINORITY_GUESS", spec, raising=False)  # as if the project defined it
    registry = ModelRegistry(own_storage)
    with pytest.raises(BelowBaselineError, match=r"test accuracy 0\.\d+ does not beat the baseline's 0\.\d+") as refused:
        train_model(own_storage, spec.name, alias="production")
    assert refused.value.result["metrics"]["beats_baseline"] is False
    assert registry.versions(spec.name) == [] and registry.aliases(spec.name) == {}
    forced = train_model(own_storage, spec.name, force=True)
    assert forced["version"] == 1
    assert registry.get(spec.name, 1).card["lineage"]["forced_below_baseline"] is True


def test_the_cli_trains_both_scikit_learn_models_and_names_the_dataset(own_storage):
    result = CliRunner().invoke(app, ["--storage", own_storage.root_uri, "train", "surf_regressor", "fruit_classifier",
                                      "--dataset", "surf_height:1", "--alias", "staging", "--json"])
    assert result.exit_code == 2 and "trains on feature view 'fruit_classification', not 'surf_height'" in _text(result)
    assert ModelRegistry(own_storage).versions("surf_regressor") == []  # checked before anything trained
    result = CliRunner().invoke(app, ["--storage", own_storage.root_uri, "train", "surf_regressor", "fruit_classifier",
                                      "--alias", "staging", "--json"])
    assert result.exit_code == 0, result.output
    documents = json.loads(result.stdout)
    assert [(d["model"], d["registered"], d["dataset"]["version"]) for d in documents] == [
        ("surf_regressor", True, 1), ("fruit_classifier", True, 1)]
    registry = ModelRegistry(own_storage)
    for document in documents:
        assert registry.aliases(document["model"])["staging"] == document["version"]


@pytest.mark.parametrize("arguments, exit_code, message", [
    (["train", "pear_classifier"], 2, "no model named 'pear_classifier'"),
    (["train", "fruit_classifier", "--gpu"], 2, "--gpu and --epochs apply to networks only"),
    (["train", "fruit_classifier", "--dataset", "fruit_classification:x"], 2,
     "dataset version must be a positive integer"),
    (["train", "fruit_classifier", "--dataset", "fruit_classification:9"], 1, "no training dataset version 9"),
])
def test_the_cli_refuses_bad_requests_by_name(own_storage, arguments, exit_code, message):
    result = CliRunner().invoke(app, ["--storage", own_storage.root_uri, *arguments])
    assert result.exit_code == exit_code
    assert message in _text(result)


def test_the_cli_exits_1_and_reports_a_refused_model(own_storage, monkeypatch):
    spec = _minority_guess("minority_guess_cli")
    monkeypatch.setattr(fruit.models, "MINORITY_GUESS", spec, raising=False)  # as if the project defined it
    result = CliRunner().invoke(app, ["--storage", own_storage.root_uri, "train", spec.name, "--json"])
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["registered"] is False and "pass --force" in document["error"]
    assert ModelRegistry(own_storage).versions(spec.name) == []
