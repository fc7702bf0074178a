"""Garbage collection in a serving worker."""

from __future__ import annotations

import gc


def freeze_long_lived() -> None:
    """Move everything alive now (the loaded model version, every imported module) out of the cyclic
    collector's reach, so a full collection no longer walks it. Without this, full collections paused
    the event loop for up to ~140 ms every ~16 s at 100 RPS (measured with the BentoML patch installed).
    Cost: cyclic garbage already made stays. Called after each deployment."""
    gc.freeze()
