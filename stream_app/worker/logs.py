"""Log output: human-readable text, or one JSON object per line for log shippers.

Log records carry no customer data: the worker logs counts, topics, partitions and
errors about unreadable internal messages, never event payloads, customer ids or profile
attributes (``tests/integration/test_operations.py`` checks a worker's JSON log for them).

>>> config = logging_config("info", "json")
>>> config["root"], sorted(config["formatters"]["json"])
({'level': 'INFO', 'handlers': ['default']}, ['()', 'fmt', 'rename_fields'])
>>> logging_config("info", "text") is None  # Faust's own coloured text format
True
"""

from __future__ import annotations

import logging.config
from typing import Any

JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
RENAMED = {"asctime": "time", "levelname": "level", "name": "logger"}


def logging_config(level: str, fmt: str) -> dict[str, Any] | None:
    """A :func:`logging.config.dictConfig` for ``fmt`` (``json``); None for ``text``."""
    if fmt != "json":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "pythonjsonlogger.json.JsonFormatter",
                                "fmt": JSON_FIELDS, "rename_fields": RENAMED}},
        "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json",
                                 "stream": "ext://sys.stdout"}},
        "root": {"level": level.upper(), "handlers": ["default"]},
    }


def setup_logging(level: str, fmt: str) -> None:
    """Configure logging before Faust does (the worker's own start-up messages)."""
    config = logging_config(level, fmt)
    if config is None:
        logging.basicConfig(level=level.upper(),
                            format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    else:
        logging.config.dictConfig(config)
        logging.captureWarnings(True)  # warnings as log records, not raw stderr lines
