"""How the service logs: lines for people (SMS_LOG_FORMAT=text, the default) or one JSON object per
line for log pipelines (SMS_LOG_FORMAT=json). Either way every line passes one redaction first: an
API key or a password in a connection string (a database URL in an error message, say) never
reaches the log, whoever wrote the line — the service, uvicorn, alembic or a driver.

A record may carry fields of its own (`extra={"fields": {...}}`, as the request log does): JSON
lines hold them as members, text lines end with them as key=value pairs.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

# An API key as app.domain.keys makes them, anywhere in a line: its id may stay, its secret may not.
_KEY = re.compile(r"(sms_k_[A-Za-z0-9]{12}_)[A-Za-z0-9_-]{43}")
# The password of a URL (postgresql://user:password@host) and of a libpq keyword string (password=…).
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)[^@\s/]*@")
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """The text with every API key's secret and every password of a connection string replaced."""
    # each pattern starts with a fixed string that most lines lack: a search for it costs a
    # fraction of the pattern's (a line per request)
    if "sms_k_" in text:
        text = _KEY.sub(rf"\1{REDACTED}", text)
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
    if "password" in text.lower():
        text = _KEYWORD_PASSWORD.sub(rf"\1{REDACTED}", text)
    return text


class TextFormatter(logging.Formatter):
    """`LEVEL logger: message key=value …`, redacted."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            # values are quoted as JSON strings: a claimed actor cannot forge a second field or line
            line += "".join(f" {name}={_text_value(value)}" for name, value in fields.items() if value is not None)
        return redact(line)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the record's fields, and the
    exception (its traceback as text) when there is one; redacted."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return redact(msgspec.json.encode(entry, enc_hook=str).decode())


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Every log line of the process to stderr in `log_format` (replacing any handler set before)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    # no line says where in the code it was logged, nor in which thread or process: spare every
    # record the walk up the stack and the look-ups that find out (the logging HOWTO's
    # optimisations; the service logs a line per request)
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _text_value(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return msgspec.json.encode(str(value)).decode()
