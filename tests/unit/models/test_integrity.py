"""Artifact checksums: recorded at save time, checked before a version is served."""

from pathlib import Path

import pytest

from models import registry, version


@pytest.fixture()
def saved(artifacts_dir):
    tag = registry.save(
        artifacts_dir, {"dataset": "synthetic"}, {"sha256": {"stale": "another version's"}}
    ).tag
    return registry.get(str(tag))  # as the store holds it (save builds it in a temporary directory)


def test_save_records_the_sha256_of_every_artifact_as_copied(saved):
    recorded = saved.info.metadata[version.CHECKSUMS]
    path = Path(saved.path)
    assert set(version.ARTIFACTS) <= set(recorded)
    assert recorded == {name: version.sha256(path / name) for name in recorded}
    assert version.checksum_problems(path, recorded) == []


def test_an_artifact_changed_after_save_is_not_servable(saved):
    onnx = Path(saved.path) / version.ranker_file("int8")
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: still the same size
    onnx.write_bytes(bytes(data))
    problems = registry.servable_problems(registry.get(str(saved.tag)))
    assert any(p.startswith("ranker_int8.onnx is corrupted (sha256") for p in problems), problems


def test_a_deleted_artifact_is_reported_once(saved):
    (Path(saved.path) / version.POPULARITY).unlink()
    problems = registry.servable_problems(registry.get(str(saved.tag)))
    assert problems.count(f"missing {version.POPULARITY}") == 1


def test_no_recorded_checksums_is_no_result_not_a_pass(artifacts_dir):
    assert version.checksum_problems(artifacts_dir, None) is None


@pytest.mark.parametrize(
    "recorded, message",
    [
        ("abc", "not a map"),
        ({version.RETRIEVAL: "not hex"}, "not a map"),
        ({"../../etc/passwd": "0" * 64}, "unknown artifact"),
        ({version.RETRIEVAL: "0" * 64}, "no checksum recorded for"),
    ],
)
def test_malformed_checksums_are_problems(artifacts_dir, recorded, message):
    problems = version.checksum_problems(artifacts_dir, recorded)
    assert problems and any(message in p for p in problems), problems
