"""A/B variant config and assignment."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from runners.serving.variants import Assigner, VariantConfig, unit_hash

CONFIG = {
    "salt": "exp-1",
    "variants": [
        {"name": "control", "model": "production", "precision": "int8", "share": 0.7},
        {"name": "treatment", "model": "folio:abc", "precision": "fp16", "share": 0.3},
        {"name": "candidate", "model": "folio:def", "precision": "int8", "shadow": True},
    ],
}


def config(**changes) -> VariantConfig:
    return VariantConfig.model_validate(CONFIG | changes)


def test_shares_hold_over_10000_users() -> None:
    assigner = Assigner(config())
    counts = Counter(assigner.assign(f"user-{n}").name for n in range(10_000))
    assert set(counts) == {"control", "treatment"}  # a shadow serves nobody
    # binomial sd at n=10,000, p=0.3 is 0.0046: 4 sd
    assert abs(counts["treatment"] / 10_000 - 0.3) < 0.018, counts


def test_a_user_always_gets_the_same_variant() -> None:
    first, second = Assigner(config()), Assigner(config())
    for n in range(500):
        assert first.assign(f"u{n}").name == second.assign(f"u{n}").name == first.assign(f"u{n}").name


def test_the_salt_reshuffles() -> None:
    a, b = Assigner(config()), Assigner(config(salt="exp-2"))
    moved = sum(a.assign(f"u{n}").name != b.assign(f"u{n}").name for n in range(2000))
    assert 600 < moved < 1200, moved  # independent draws disagree with p = 2 * 0.7 * 0.3 = 0.42


def test_unit_hash_is_uniform_and_stable() -> None:
    xs = [unit_hash("s", str(n)) for n in range(20_000)]
    assert min(xs) >= 0 and max(xs) < 1 and abs(sum(xs) / len(xs) - 0.5) < 0.01
    assert unit_hash("s", "42") == unit_hash("s", "42") != unit_hash("t", "42")


@pytest.mark.parametrize(
    ("variants", "says"),
    [
        ([{"name": "a", "share": 0.5}], "sum to 1"),
        ([{"name": "a", "share": 1.0}, {"name": "a", "share": 0.0}], "unique"),
        ([{"name": "s", "shadow": True}], "at least one"),
        ([{"name": "a", "share": 1.0}, {"name": "s", "shadow": True, "share": 0.1}], "takes no share"),
        ([{"name": "a", "share": 1.0, "precision": "int4"}], "precision"),
        ([{"name": "a", "share": 1.0, "colour": "red"}], "colour"),
    ],
)
def test_bad_configs_say_what_is_wrong(variants: list[dict], says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        VariantConfig.model_validate({"variants": variants})


def test_parse_default_inline_and_file(tmp_path: Path) -> None:
    default = VariantConfig.parse(None, "fp16", None)
    assert [(v.name, v.model, v.precision, v.share) for v in default.variants] == [
        ("default", "production", "fp16", 1.0)
    ]
    assert VariantConfig.parse(None, "int8", "folio:x").variants[0].model == "folio:x"
    assert VariantConfig.parse(json.dumps(CONFIG), "int8", None).by_name("candidate").shadow  # type: ignore[union-attr]
    path = tmp_path / "variants.json"
    path.write_text(json.dumps(CONFIG))
    assert [v.name for v in VariantConfig.parse(f"@{path}", "int8", None).shadows] == ["candidate"]


def test_settings_refuse_a_bad_variants_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from runners.platform.settings import SettingsError, load_settings

    monkeypatch.setenv("FOLIO_VARIANTS", '{"variants": [{"name": "a", "share": 0.4}]}')
    load_settings.cache_clear()
    with pytest.raises(SettingsError, match=r"(?s)FOLIO_VARIANTS.*sum to 1"):
        load_settings()
    load_settings.cache_clear()
