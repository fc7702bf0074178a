"""Helpers of the schemathesis fuzz suite (tests/integration/test_fuzz.py)."""
