"""The feedback event vocabulary, defined once: the names the API accepts, what each is worth as a
rating (history weights, the feedback export) and as a trending contribution."""

from __future__ import annotations

from typing import Literal, get_args

EventName = Literal["view", "click", "add_to_cart", "purchase", "rate"]
EVENTS: tuple[EventName, ...] = get_args(EventName)

# Feedback events on the 1..5 rating scale: what serving's history weights (rating_weight) and the
# feedback export (training/feedback.py) both read. A "rate" event is its value (4 when it has none); an
# event under POSITIVE_RATING is not a positive interaction (seen, but neither history nor training).
EVENT_RATINGS: dict[EventName, float] = {"view": 3.0, "click": 4.0, "add_to_cart": 4.0, "purchase": 5.0}
UNRATED_RATING = 4.0
POSITIVE_RATING = 3.0


def event_rating(event: str, value: float | None) -> float:
    """The rating an event stands for (EVENT_RATINGS; a "rate" event's own value)."""
    if event == "rate":
        return UNRATED_RATING if value is None else float(value)
    return EVENT_RATINGS[event]  # type: ignore[index]


# How much one event adds to its item's trending score (decayed over time: runners/state/protocol.py).
TRENDING_WEIGHTS: dict[EventName, float] = {
    "view": 1.0,
    "click": 2.0,
    "add_to_cart": 3.0,
    "purchase": 5.0,
    "rate": 2.0,
}
