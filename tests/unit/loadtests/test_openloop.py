"""The open-loop generator's tally of a JSON field in the answers."""

from loadtests.harness.openloop import _field


def test_field_reads_a_top_level_value_as_text():
    assert _field(b'{"fallback": "none", "items": []}', "fallback") == "none"
    assert _field(b'{"items": []}', "fallback") == "None"  # absent field


def test_field_survives_answers_that_are_no_json_object():
    assert _field(b"<html>oops</html>", "fallback") == "<not json>"
    assert _field(b"[1, 2]", "fallback") == "<not json>"
