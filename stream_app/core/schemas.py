"""Where the JSON Schema files of ``schemas/`` are found, in a checkout or an install."""

from __future__ import annotations

import os
import sys
from functools import cache
from pathlib import Path
from typing import Any

import orjson


def schemas_dir() -> Path:
    """The folder holding the schema files.

    ``STREAM_APP_SCHEMAS_DIR`` wins; then the ``schemas/`` folder of a source checkout
    (editable installs); then ``<prefix>/share/stream-app/schemas`` of a regular install.
    """
    override = os.environ.get("STREAM_APP_SCHEMAS_DIR")
    candidates = [Path(override)] if override else []
    candidates += [
        Path(__file__).resolve().parents[2] / "schemas",
        Path(sys.prefix) / "share" / "stream-app" / "schemas",
    ]
    for candidate in candidates:
        if (candidate / "clickstream.schema.json").is_file():
            return candidate
    raise FileNotFoundError(f"no schemas folder found; looked in {[str(c) for c in candidates]}")


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Parse one schema file, e.g. ``load_schema("segment-change.schema.json")``."""
    return orjson.loads((schemas_dir() / name).read_bytes())
