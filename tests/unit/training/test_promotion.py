"""training/promotion.py: main promotes only a version at least as good as production on its dataset;
training/artifacts.py: train hands export a version directory, not a pickle."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from models import registry, version
from training.artifacts import SAVE_FILE, save_run, write_run
from training.experiment import RunResult
from training.promotion import verdict


def stored(tag: str, dataset: str, ndcg: float | None) -> Any:
    test = {} if ndcg is None else {"Folio (retrieve + rank)": {"ndcg@10": ndcg}}
    return SimpleNamespace(
        tag=tag, info=SimpleNamespace(labels={"dataset": dataset}, metadata={"test": test})
    )


def test_promotes_only_when_at_least_as_good_on_the_same_dataset() -> None:
    new = stored("folio:new", "ml-100k", 0.30)
    assert verdict(new, None) == (True, "no production version yet")
    assert verdict(new, stored("folio:old", "ml-100k", 0.30))[0]  # equal: promoted
    assert verdict(new, stored("folio:old", "ml-100k", 0.29))[0]
    worse, why = verdict(new, stored("folio:old", "ml-100k", 0.31))
    assert not worse and "0.3000 < production folio:old's 0.3100" in why
    assert verdict(new, stored("folio:old", "ml-1m", 0.5))[0]  # another dataset: nothing to compare
    assert verdict(new, stored("folio:old", "ml-100k", None))[0]
    assert not verdict(stored("folio:new", "ml-100k", None), stored("folio:old", "ml-100k", 0.3))[0]


def test_train_hands_export_a_complete_version_directory(trained: RunResult, tmp_path: Path) -> None:
    out = write_run(trained, tmp_path, "abc123")
    assert version.missing(out) == [] and (tmp_path / SAVE_FILE).is_file()
    model = save_run(tmp_path)
    assert registry.servable_problems(model) == []
    assert model.info.metadata["git_commit"] == "abc123" and model.info.labels["stage"] == "candidate"
    assert model.info.metadata["index"]["kind"] in ("flat", "ivf")
