"""runners/platform/settings.py: bounds that keep every computation finite, errors that name the variable."""

from __future__ import annotations

import pytest

from runners.platform.settings import Settings, SettingsError, load_settings


def load_with(mp: pytest.MonkeyPatch, **env: str) -> Settings:
    for k, v in env.items():
        mp.setenv(k, v)
    load_settings.cache_clear()
    try:
        return load_settings()
    finally:
        load_settings.cache_clear()


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"FOLIO_TRENDING_HALF_LIFE_S": "30"}, "FOLIO_TRENDING_HALF_LIFE_S"),
        (
            {"FOLIO_TRENDING_HALF_LIFE_S": "60", "FOLIO_FEEDBACK_MAX_SKEW_S": "7200"},
            "FOLIO_FEEDBACK_MAX_SKEW_S",
        ),
        ({"FOLIO_FEEDBACK_MAX_AGE_S": "1"}, "FOLIO_FEEDBACK_MAX_AGE_S"),
        ({"FOLIO_FEEDBACK_USER_BURST": "0"}, "FOLIO_FEEDBACK_USER_BURST"),
        ({"FOLIO_RATE_LIMIT_RPS": "inf"}, "FOLIO_RATE_LIMIT_RPS"),
        ({"FOLIO_USER_HASH_KEY": "short"}, "FOLIO_USER_HASH_KEY"),
        ({"FOLIO_FEEDBACK_USER_RPS": "1e-12"}, "FOLIO_FEEDBACK_USER_RPS"),  # expiry 1e+18 ms: Redis refuses
    ],
)
def test_out_of_bounds_settings_fail_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], names: str
) -> None:
    with pytest.raises(SettingsError, match=names):
        load_with(monkeypatch, **env)


def test_the_shortest_half_life_with_the_largest_allowed_skew_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_with(monkeypatch, FOLIO_TRENDING_HALF_LIFE_S="60", FOLIO_FEEDBACK_MAX_SKEW_S="3840")
    assert s.feedback_max_skew_s / s.trending_half_life_s == 64


def test_the_hash_key_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_with(monkeypatch, FOLIO_USER_HASH_KEY="k" * 40)
    assert "k" * 40 not in repr(s) and "k" * 40 not in s.public_hash()
