"""mkdocs hook: the settings table of docs/configuration.md, from stream_app.config.

The page holds the marker ``<!-- settings-table -->``; at build time it is replaced by one
row per field of :class:`stream_app.config.Settings`: its environment variable, the field,
the default (``metadata["default_doc"]`` where the value needs words) and the meaning
(``metadata["doc"]``). A setting added without a ``doc`` fails the build.
"""

from __future__ import annotations

import re
import sys
from dataclasses import MISSING, fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root

from stream_app.config import Settings

MARKER = "<!-- settings-table -->"

#: Pages of the sections the meanings name in italics (``see *Privacy*``).
SECTIONS = {
    "Audiences": "audiences.md",
    "Privacy": "privacy.md",
    "Security of the HTTP API": "security.md",
    "Segment quality": "segmentation.md#segment-quality",
    "Segmentation": "segmentation.md",
}


def shown_default(value: object) -> str:
    """The default as the table shows it.

    >>> [shown_default(v) for v in (False, 5.0, 0.45, 8, "", "memory://")]
    ['`false`', '`5`', '`0.45`', '`8`', 'empty', '`memory://`']
    """
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if value == "":
        return "empty"
    return f"`{value}`"


def _linked(text: str) -> str:
    names = "|".join(sorted(map(re.escape, SECTIONS), key=len, reverse=True))
    return re.sub(rf"(?<![*\w])\*({names})\*(?![*\w])",
                  lambda m: f"[{m.group(1)}]({SECTIONS[m.group(1)]})", text)


def settings_table() -> str:
    """The Markdown table of every setting (a ``ValueError`` names one without a doc)."""
    rows = ["| variable | `Settings` field | default | meaning |", "| --- | --- | --- | --- |"]
    for f in fields(Settings):
        doc = f.metadata.get("doc", "").strip()
        if not doc:
            raise ValueError(f"Settings.{f.name} has no metadata['doc'] (stream_app/config.py)")
        default = f.metadata.get("default_doc") or (
            shown_default(f.default) if f.default is not MISSING else "(required)")
        cells = [f"`{f.metadata['env']}`", f"`{f.name}`", _linked(default), _linked(doc)]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, settings_table())
    return markdown
