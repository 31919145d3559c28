import json
from concurrent.futures import ProcessPoolExecutor

import pytest

from orchard.registry import IntegrityError, ModelRegistry, RegistryError
from orchard.storage import Storage


def _registry(tmp_path) -> ModelRegistry:
    return ModelRegistry(Storage(str(tmp_path)))


def _register_one(root: str) -> int:
    return ModelRegistry(Storage(root)).register("racer", {"w.bin": b"w"}, {"flavor": "test"}).version


def test_versions_are_consecutive_integers_starting_at_one(tmp_path):
    registry = _registry(tmp_path)
    assert [registry.register("m", {"w.bin": bytes([i])}, {"flavor": "test"}).version for i in range(3)] == [1, 2, 3]
    assert registry.versions("m") == [1, 2, 3]


def test_card_records_name_version_and_created_time(tmp_path):
    registry = _registry(tmp_path)
    registry.register("m", {"w.bin": b"x"}, {"flavor": "test", "metrics": {"acc": 0.9}})
    card = registry.get("m", 1).card
    assert (card["name"], card["version"], card["metrics"]) == ("m", 1, {"acc": 0.9})
    assert card["created_at"].endswith("+00:00")


def test_concurrent_registrations_never_share_a_version(tmp_path):
    with ProcessPoolExecutor(max_workers=4) as pool:
        versions = list(pool.map(_register_one, [str(tmp_path)] * 12))
    assert sorted(versions) == list(range(1, 13))
    assert not [n for n in (tmp_path / "models" / "racer").iterdir() if n.name.startswith(".staging")]


def test_a_tampered_file_is_detected_and_named(tmp_path):
    registry = _registry(tmp_path)
    registry.register("m", {"weights.bin": b"original"}, {"flavor": "test"})
    (tmp_path / "models" / "m" / "1" / "weights.bin").write_bytes(b"changed")
    with pytest.raises(IntegrityError, match="weights.bin"):
        registry.read_file("m", 1, "weights.bin")
    with pytest.raises(IntegrityError):
        registry.verify("m", 1)


def test_a_tampered_card_is_detected(tmp_path):
    registry = _registry(tmp_path)
    registry.register("m", {"w.bin": b"w"}, {"flavor": "test", "metrics": {"acc": 0.5}})
    card_path = tmp_path / "models" / "m" / "1" / "model.json"
    card = json.loads(card_path.read_text())
    card["metrics"]["acc"] = 0.99
    card_path.write_text(json.dumps(card))
    with pytest.raises(IntegrityError, match="model.json"):
        registry.get("m", 1)


def test_resolve_prefers_production_alias_then_latest(tmp_path):
    registry = _registry(tmp_path)
    for _ in range(3):
        registry.register("m", {"w.bin": b"w"}, {"flavor": "test"})
    assert registry.resolve("m") == 3
    registry.set_alias("m", "production", 2)
    assert registry.resolve("m") == 2
    assert registry.resolve("m", "production") == 2
    assert registry.resolve("m", 1) == 1


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda r: r.resolve("absent"), "no model named 'absent'"),
        (lambda r: r.resolve("m", 9), "no version 9"),
        (lambda r: r.resolve("m", "staging"), "no alias 'staging'"),
        (lambda r: r.set_alias("m", "production", 5), "no version 5"),
        (lambda r: r.register("Bad Name", {"w": b""}, {}), "model name 'Bad Name'"),
        (lambda r: r.register("m", {"model.json": b""}, {}), "reserved"),
        (lambda r: r.register("m", {"../x": b""}, {}), "plain name"),
    ],
)
def test_refusals_name_what_was_wrong(tmp_path, call, message):
    registry = _registry(tmp_path)
    registry.register("m", {"w.bin": b"w"}, {"flavor": "test"})
    with pytest.raises(RegistryError, match=message):
        call(registry)
