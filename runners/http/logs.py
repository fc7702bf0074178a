"""Request ids and JSON logs: one JSON object a line, carrying the id of the request being served.

The id is ``X-Request-ID`` from the client (if sane) or a new one; the guard (runners/http/guard.py)
sets it for the request, echoes it on the response, and endpoints read it from ``REQUEST_ID``. When the
request is traced (runners/platform/tracing.py), its ``trace_id`` and ``span_id`` follow; otherwise the
line has neither.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import uuid

from runners.platform import tracing

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("folio_request_id", default="-")
_SANE_ID = re.compile(r"^[\w.-]{1,64}$")


def request_id(given: str | None) -> str:
    """The client's id when it is sane (1..64 word characters, dots, dashes), else a new one."""
    return given if given and _SANE_ID.match(given) else uuid.uuid4().hex


class JsonLogFormatter(logging.Formatter):
    """One JSON object a line, with the request id (and the trace id, when traced) of the request being
    served."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "request_id": REQUEST_ID.get(),
        }
        if (ids := tracing.log_ids()) is not None:
            entry["trace_id"], entry["span_id"] = ids
        entry["message"] = record.getMessage()
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging() -> None:
    log = logging.getLogger("runners")
    if not any(isinstance(h.formatter, JsonLogFormatter) for h in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(JsonLogFormatter())
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
