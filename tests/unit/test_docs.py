"""The docs site (mkdocs.yml, docs/) and the README against the code they describe.

``make docs`` (also run by ``make test`` and ``make lint``) builds the site with
``mkdocs build --strict``; these tests check what the build cannot: that the generated
configuration table is the whole of :class:`~stream_app.config.Settings`, and that the
README's package map is the tree of ``stream_app``.
"""

from __future__ import annotations

import doctest
import importlib.util
import re
from dataclasses import fields
from pathlib import Path
from types import ModuleType

import yaml

from stream_app.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def hook() -> ModuleType:
    """docs/hooks/configuration.py, the mkdocs hook that writes the settings table."""
    spec = importlib.util.spec_from_file_location(
        "docs_hook_configuration", DOCS / "hooks" / "configuration.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(table: str) -> list[list[str]]:
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def test_the_generated_configuration_table_lists_every_setting():
    configuration = hook()
    page = (DOCS / "configuration.md").read_text()
    assert page.count(configuration.MARKER) == 1
    rendered = configuration.on_page_markdown(page, None, None, None)
    assert configuration.MARKER not in rendered
    rows = table_rows(rendered)
    listed = [(env.strip("`"), name.strip("`")) for env, name, _, _ in rows]
    assert listed == [(f.metadata["env"], f.name) for f in fields(Settings)]
    for env, _name, default, meaning in rows:
        assert default and meaning, env


def test_every_setting_has_a_description_in_its_metadata():
    undocumented = [f.name for f in fields(Settings) if not f.metadata.get("doc", "").strip()]
    assert undocumented == []


def test_a_setting_without_a_description_fails_the_build(monkeypatch):
    configuration = hook()
    field = fields(Settings)[0]
    monkeypatch.setattr(configuration, "fields", lambda _cls: [
        type("F", (), {"name": field.name, "default": field.default,
                       "metadata": {"env": field.metadata["env"]}})()])
    try:
        configuration.settings_table()
    except ValueError as exc:
        assert field.name in str(exc)
    else:
        raise AssertionError("a setting without metadata['doc'] was rendered")


def test_the_hook_examples():
    failed, _ = doctest.testmod(hook(), optionflags=doctest.ELLIPSIS)
    assert failed == 0


def test_the_readme_package_map_is_the_tree_of_stream_app():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Package map"):]
    block = section[section.index("```"):]
    block = block[3:block.index("```", 3)]
    assert block.lstrip("\n").startswith("stream_app/\n")
    mapped = re.findall(r"^  ([a-z_]+)/ +\S", block, flags=re.M)
    packages = sorted(p.parent.name for p in (ROOT / "stream_app").glob("*/__init__.py"))
    assert sorted(mapped) == packages
    assert len(mapped) == len(set(mapped))


def test_the_module_map_lists_every_module_of_stream_app():
    """docs/architecture.md's module map names each module under the package it lives in."""
    text = (DOCS / "architecture.md").read_text()
    section = text[text.index("## Module map"):]
    block = section[section.index("```") + 3:]
    block = block[:block.index("```")]
    listed: set[str] = set()
    package = ""
    for line in block.splitlines():
        if m := re.match(r"^  ([a-z_]+)/ ", line):
            package = m.group(1)
        elif m := re.match(r"^    ([a-z_]+\.(?:py|html)) ", line):
            listed.add(f"{package}/{m.group(1)}")
    tree = {f"{p.parent.name}/{p.name}" for p in (ROOT / "stream_app").glob("*/*")
            if p.suffix in {".py", ".html"} and p.name != "__init__.py"}
    assert listed == tree, (sorted(tree - listed), sorted(listed - tree))


def test_readme_links_to_docs_pages_that_exist_and_are_in_the_site():
    readme = (ROOT / "README.md").read_text()
    linked = set(re.findall(r"\]\(docs/([a-z-]+\.md)(?:#[a-z0-9_-]+)?\)", readme))
    assert linked
    for page in linked:
        assert (DOCS / page).exists(), page
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    in_site = {next(iter(entry.values())) for entry in nav}
    pages = {p.name for p in DOCS.glob("*.md")}
    assert in_site == pages
    assert pages - {"index.md"} <= linked  # the README points at every page
