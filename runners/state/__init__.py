"""Serving state: the state-store protocol and its backends, the catalog log and the feedback log."""
