"""mkdocs hook: links from docs pages to files of the repository outside docs/.

The pages link to ``../examples/trigger_service.py`` or ``../schemas/`` so that they work
where the Markdown is read in the repository. The site holds only docs/, so at build time
such a link becomes a link into ``repo_url`` (when mkdocs.yml sets it) or the path as
code; a link to a repository file that does not exist fails the build.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.exceptions import PluginError

LINK = re.compile(r"\[([^\]]+)\]\(([^)\s#]+)(#[^)\s]*)?\)")


def on_page_markdown(markdown: str, page, config, files) -> str:
    docs = Path(config["docs_dir"]).resolve()
    root = docs.parent
    here = Path(page.file.abs_src_path).parent
    repo_url = (config.get("repo_url") or "").rstrip("/")

    def rewrite(m: re.Match) -> str:
        text, target, anchor = m.group(1), m.group(2), m.group(3) or ""
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("/"):
            return m.group(0)  # a URL
        path = (here / target).resolve()
        if path == docs or docs in path.parents:
            return m.group(0)  # a page or image of the site: mkdocs checks it
        if root not in path.parents or not path.exists():
            raise PluginError(f"{page.file.src_uri}: link to {target}, which is not a file "
                              "of the repository")
        rel = path.relative_to(root).as_posix() + ("/" if path.is_dir() else "")
        if repo_url:
            return f"[{text}]({repo_url}/blob/HEAD/{rel}{anchor})"
        return text if text.startswith("`") else f"{text} (`{rel}`)"

    return LINK.sub(rewrite, markdown)
