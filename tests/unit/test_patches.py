"""The patches of framework internals live in stream_app/worker/patches.py only, and are
checked when installed.

(a) Every module of stream_app is parsed with ``ast``; outside patches.py none may use an
underscore-private attribute that stream_app does not define itself (``consumer._read_offset``,
``table._on_changelog_sent``, ``online._rng``), import a private name of Faust, mode,
aiokafka, aiohttp or River, replace an attribute of a class imported from them (also with
``setattr``), change a function's defaults (``__kwdefaults__``), or set an attribute on the
worker's app that :class:`~stream_app.worker.segmentation_app.SegmentationApp` does not
declare. (b) :func:`stream_app.worker.patches.install` refuses, with the package, its
installed version and the tested range, when a patched attribute is missing or changed.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import aiokafka
import pytest
from aiohttp.web_protocol import RequestHandler
from faust.stores.base import Store
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from mode.services import Service

from stream_app.worker import patches

PACKAGE = Path(__file__).resolve().parents[2] / "stream_app"
PATCHES = PACKAGE / "worker" / "patches.py"
FRAMEWORKS = {"faust", "mode", "aiokafka", "aiohttp", "river"}
#: Private attributes of other packages our code may use: ``receiver.name`` pairs.
ALLOWED = {("os", "_exit")}  # exit at once, without cleanup: the bounded stop, cli
#: Underscore names that are public API of the standard library (namedtuple).
STDLIB_API = {"_replace", "_asdict", "_fields", "_make"}
#: Dunder attributes by which a function's behaviour is changed from outside.
FUNCTION_INTERNALS = {"__kwdefaults__", "__defaults__", "__code__", "__globals__"}


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def root_name(node: ast.expr) -> str | None:
    """The name an attribute chain starts from (``a`` of ``a.b.c``), else None."""
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def own_private_names(trees: list[ast.Module]) -> set[str]:
    """Underscore names stream_app defines: functions, classes, module and class
    variables, and attributes assigned on ``self``/``cls``."""
    names: set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets = [node.target]
            for target in targets:
                for part in ast.walk(target):
                    if isinstance(part, ast.Name):
                        names.add(part.id)
                    elif (isinstance(part, ast.Attribute) and isinstance(part.value, ast.Name)
                          and part.value.id in ("self", "cls")):
                        names.add(part.attr)
    return {name for name in names if is_private(name)}


def declared_app_attributes() -> set[str]:
    """The attributes SegmentationApp declares (class annotations and self.x in it)."""
    tree = ast.parse((PACKAGE / "worker" / "segmentation_app.py").read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef)
              and n.name == "SegmentationApp"]
    declared = {n.target.id for n in cls.body
                if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    declared |= {n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute)
                 and isinstance(n.ctx, ast.Store) and root_name(n) == "self"}
    return declared


def framework_imports(tree: ast.Module) -> set[str]:
    """Names a module binds to Faust, mode, aiokafka, aiohttp or River (or their parts)."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FRAMEWORKS:
                    bound.add(alias.asname or alias.name.split(".")[0])
        elif (isinstance(node, ast.ImportFrom) and node.module
              and node.module.split(".")[0] in FRAMEWORKS):
            bound.update(alias.asname or alias.name for alias in node.names)
    return bound


def violations(source: str, own: set[str], app_attributes: set[str]) -> list[str]:
    """What in ``source`` touches framework internals, as ``line: text`` strings."""
    tree = ast.parse(source)
    frameworks = framework_imports(tree)
    found: list[str] = []

    def flag(node: ast.AST, why: str) -> None:
        found.append(f"{getattr(node, 'lineno', '?')}: {why}: {ast.unparse(node)}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            receiver = root_name(node.value) if isinstance(node.value, ast.Name) else None
            if (is_private(node.attr) and node.attr not in own
                    and node.attr not in STDLIB_API and (receiver, node.attr) not in ALLOWED):
                flag(node, "private attribute not defined by stream_app")
            if node.attr in FUNCTION_INTERNALS:
                flag(node, "a function's internals")
            if isinstance(node.ctx, (ast.Store, ast.Del)):
                root = root_name(node)
                if root in frameworks:
                    flag(node, "replaces an attribute of a framework object")
                if (root == "app" and isinstance(node.value, ast.Name)
                        and node.attr not in app_attributes):
                    flag(node, "an attribute SegmentationApp does not declare")
        elif isinstance(node, ast.ImportFrom) and node.module and (
                node.module.split(".")[0] in FRAMEWORKS):
            for alias in node.names:
                if is_private(alias.name):
                    flag(node, "imports a private name")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("setattr", "delattr") and node.args
              and root_name(node.args[0]) in frameworks):
            flag(node, f"{node.func.id} on a framework object")
    return found


def modules() -> dict[Path, str]:
    return {path: path.read_text() for path in sorted(PACKAGE.rglob("*.py"))}


@pytest.fixture(scope="module")
def rules() -> tuple[set[str], set[str]]:
    sources = modules()
    own = own_private_names([ast.parse(text) for path, text in sources.items()
                             if path != PATCHES])
    return own, declared_app_attributes()


def test_only_patches_touches_framework_internals(rules: tuple[set[str], set[str]]) -> None:
    found = {str(path.relative_to(PACKAGE.parent)): v for path, text in modules().items()
             if path != PATCHES and (v := violations(text, *rules))}
    assert found == {}, "move these into stream_app/worker/patches.py: " + repr(found)


@pytest.mark.parametrize("source", [
    "delivered = self.consumer._read_offset",
    "send(callback=table._on_changelog_sent)",
    "rand = partial(self.online._rng.gauss, 0, 1)",
    "consumer._fetch_max_wait_ms = 50",
    "consumer = self._ensure_consumer()",
    "client.__init__.__kwdefaults__['retry_backoff_ms'] = 1000",
    "from faust.transport.consumer import Consumer\nConsumer.perform_seek = perform_seek",
    "import aiohttp.web_protocol\naiohttp.web_protocol.RequestHandler.handle_error = f",
    "from aiohttp.web_protocol import RequestHandler\nsetattr(RequestHandler, 'handle_error', f)",
    "from faust.utils import _private",
    "app.on_stop = on_stop",
])
def test_the_rule_catches_patches(source: str, rules: tuple[set[str], set[str]]) -> None:
    """The rule would catch what used to be spread over the worker (none of these private
    names is one that stream_app defines, which would hide it)."""
    assert violations(source, *rules)


def test_the_rule_allows_our_own_code(rules: tuple[set[str], set[str]]) -> None:
    source = ("learner._set_centres(c)\nos._exit(75)\nrow._replace(a=1)\n"
              "app.on_seek = on_seek\napp.model_feed = feed\nsuper()._event_id()")
    assert violations(source, *rules) == []


def test_patches_module_is_what_the_rule_would_flag(rules: tuple[set[str], set[str]]) -> None:
    """patches.py is exempt because it holds the patches, not because the rule misses them."""
    assert len(violations(PATCHES.read_text(), *rules)) >= 5


# -- (b) install checks what it patches --------------------------------------------------

PATCHED = [(Consumer, "perform_seek"), (AIOKafkaConsumerThread, "seek_to_committed"),
           (AIOKafkaConsumerThread, "_create_worker_consumer"),
           (RequestHandler, "handle_error")]


#: Attributes install adds to a class that inherits them (the class's own is removed after).
ADDED = [(Consumer, "wait_first")]


@pytest.fixture
def restored(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Every attribute install may replace is put back after the test."""
    for owner, name in PATCHED:
        monkeypatch.setattr(owner, name, vars(owner)[name])
    for client in (aiokafka.AIOKafkaConsumer, aiokafka.AIOKafkaProducer):
        defaults = client.__init__.__kwdefaults__
        monkeypatch.setitem(defaults, "retry_backoff_ms", defaults["retry_backoff_ms"])
    before = {(owner, name): vars(owner).get(name) for owner, name in ADDED}
    yield monkeypatch
    for (owner, name), own in before.items():
        if own is not None:
            setattr(owner, name, own)
        elif name in vars(owner):
            delattr(owner, name)


def test_install_is_idempotent(restored: pytest.MonkeyPatch) -> None:
    patches.install(fetch_max_wait_ms=50, retry_backoff_ms=1000)
    installed = {name: vars(owner)[name] for owner, name in PATCHED + ADDED}
    patches.install(fetch_max_wait_ms=50, retry_backoff_ms=1000)
    assert {name: vars(owner)[name] for owner, name in PATCHED + ADDED} == installed
    assert Consumer.wait_first._stream_app_original is Service.wait_first
    seek = Consumer.perform_seek
    assert not hasattr(seek._stream_app_original, "_stream_app_original")  # wrapped once
    assert seek.__doc__ == seek._stream_app_original.__doc__
    assert aiokafka.AIOKafkaProducer.__init__.__kwdefaults__["retry_backoff_ms"] == 1000
    patches.install_fetch_wait(10)  # another wait replaces the first, not wraps it
    create = AIOKafkaConsumerThread._create_worker_consumer
    assert create.fetch_wait_ms == 10
    assert not hasattr(create._stream_app_original, "_stream_app_original")


def expect_refusal(distribution: str, *words: str) -> Any:
    """pytest.raises(PatchError) whose message holds ``words``, the package's tested range
    and its installed version, in that order."""
    parts = [*words, f"{distribution}{patches.TESTED[distribution]}",
             f"{distribution} {metadata.version(distribution)} is installed"]
    return pytest.raises(patches.PatchError, match="(?s)" + ".*".join(map(re.escape, parts)))


def test_install_refuses_a_missing_method(restored: pytest.MonkeyPatch) -> None:
    restored.delattr(Store, "_encode_value")
    with expect_refusal("faust-streaming", "Store._encode_value is missing"):
        patches.install()


def test_install_refuses_a_changed_signature(restored: pytest.MonkeyPatch) -> None:
    restored.setattr(RequestHandler, "handle_error", lambda self, request: None)
    with expect_refusal("aiohttp", "RequestHandler.handle_error has the parameters "
                                   "(self, request), expected"):
        patches.install()


def test_install_refuses_a_method_no_longer_async(restored: pytest.MonkeyPatch) -> None:
    restored.setattr(Consumer, "perform_seek", lambda self: None)
    with expect_refusal("faust-streaming", "Consumer.perform_seek is no longer a coroutine"):
        patches.install_quiet_seek()


def test_install_refuses_without_the_read_offsets(restored: pytest.MonkeyPatch) -> None:
    restored.delitem(Consumer.__annotations__, "_read_offset")
    with expect_refusal("faust-streaming", "Consumer._read_offset is not declared"):
        patches.install()
    with expect_refusal("faust-streaming", "object._read_offset is missing"):
        patches.read_offset(object())


def test_install_refuses_without_the_retry_default(restored: pytest.MonkeyPatch) -> None:
    restored.delitem(aiokafka.AIOKafkaProducer.__init__.__kwdefaults__, "retry_backoff_ms")
    before = aiokafka.AIOKafkaConsumer.__init__.__kwdefaults__["retry_backoff_ms"]
    with expect_refusal("aiokafka", "AIOKafkaProducer.__init__ has no keyword argument"):
        patches.install_retry_backoff(1000)
    # nothing half done
    assert aiokafka.AIOKafkaConsumer.__init__.__kwdefaults__["retry_backoff_ms"] == before


def test_install_refuses_a_consumer_without_the_fetch_wait(
        restored: pytest.MonkeyPatch) -> None:
    restored.delattr(AIOKafkaConsumerThread, "_create_worker_consumer")
    with expect_refusal("faust-streaming",
                        "AIOKafkaConsumerThread._create_worker_consumer is missing"):
        patches.install(fetch_max_wait_ms=50)


def test_install_refuses_a_drain_loop_that_no_longer_waits_first(
        restored: pytest.MonkeyPatch) -> None:
    async def _drain_messages(self: Any, fetcher: Any) -> None:
        await self.deliver_somehow()

    restored.setattr(Consumer, "_drain_messages", _drain_messages)
    with expect_refusal("faust-streaming", "Consumer._drain_messages no longer awaits "
                                           "wait_first"):
        patches.install()


def test_the_tested_ranges_are_the_pins_of_pyproject():
    """``patches.TESTED`` names the ranges ``pyproject.toml`` pins (kept in step by hand)."""
    text = (PACKAGE.parent / "pyproject.toml").read_text()
    dependencies = text[text.index("\ndependencies = ["):]
    dependencies = dependencies[:dependencies.index("\n]")]
    pins = dict(re.findall(r'^\s*"([A-Za-z0-9_-]+)([^";]*)"', dependencies, flags=re.M))
    for distribution, tested in patches.TESTED.items():
        assert pins[distribution] == tested, distribution
