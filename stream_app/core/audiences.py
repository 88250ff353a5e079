"""Rule-based audiences: definitions, safe conditions, membership and audience changes.

An *audience* is a named condition over a customer's features, profile attributes and
micro-segment, written in the expression language of `rule-engine
<https://zerosteiner.github.io/rule-engine/syntax.html>`_ (a parser with its own grammar:
no Python ``eval``). Definitions come from a YAML or JSON file validated by
``schemas/audiences.schema.json``; every condition is parsed once at load against the
typed names of :data:`ATTRIBUTES`, so an unknown name, a type mismatch (``region > 3``)
or a syntax error is an :class:`AudienceError` at load that names the file and the
audience. No Faust import: the worker calls :meth:`AudienceSet.memberships` on every
feature update.

>>> audiences = AudienceSet.from_document({"audiences": [
...     {"name": "lapsed-vip-almaty",
...      "condition": 'segment in [3, 7] and days_since_last_order > 30'
...                   ' and region == "Almaty"'},
...     {"name": "heavy-browsers", "condition": "views_7d >= 10",
...      "exit_condition": "views_7d < 5"}]})
>>> customer = {"segment": 3, "days_since_last_order": 41.5, "region": "Almaty",
...             "views_7d": 12}
>>> audiences.memberships(customer, current=[])
['heavy-browsers', 'lapsed-vip-almaty']
>>> audiences.memberships({**customer, "views_7d": 7}, current=["heavy-browsers"])
['heavy-browsers', 'lapsed-vip-almaty']
>>> audiences.changes(["heavy-browsers"], ["lapsed-vip-almaty"])
(['lapsed-vip-almaty'], ['heavy-browsers'])
>>> AudienceSet.from_document({"audiences": [{"name": "x", "condition": "region > 3"}]})
Traceback (most recent call last):
...
stream_app.core.audiences.AudienceError: <document>: audience 'x': condition 'region > 3': data ...

Null semantics: a customer has no value (null) for an attribute it never got, e.g.
``days_since_last_order`` before its first order, ``segment`` before its first
assignment, ``region`` without a profile. A comparison that meets null cannot be
evaluated, and a condition that cannot be evaluated does not hold: such a customer does not
enter, and a member whose ``exit_condition`` cannot be evaluated stays (without an
``exit_condition`` it leaves, since its condition no longer holds). Write
``x == null or ...`` / ``x != null and ...`` or ``(x ?? 0) > 30`` to decide explicitly.

>>> lapsed = Audience("lapsed", "", "days_since_last_order > 30", None)
>>> lapsed.holds({"days_since_last_order": None}), lapsed.exits({})
(False, True)
>>> Audience("never-ordered", "", "days_since_last_order == null", None).holds({})
True
"""

from __future__ import annotations

import difflib
import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson
import rule_engine
import yaml
from rule_engine import DataType

from stream_app.core.changes import cause_digest, deterministic_id, iso_ms
from stream_app.core.features import FEATURE_NAMES
from stream_app.core.schemas import load_schema

#: Every name a condition may use, and its type. Values a customer has no value for are
#: null (``None``).
#:
#: * the features of :data:`stream_app.core.features.FEATURE_NAMES` (numbers; the ``*_ts``
#:   ones are epoch milliseconds, ``days_since_last_order`` is fractional days and null
#:   before the first order);
#: * the profile attributes of ``schemas/customer-profile.schema.json``: ``age`` and
#:   ``income`` (numbers), ``region``, ``city`` and ``gender`` (strings);
#: * ``segment``: the customer's micro-segment id (a number; null before its first
#:   assignment) and ``segment_label``: that segment's label (a string or null).
ATTRIBUTES: dict[str, DataType] = {
    **{name: DataType.FLOAT for name in FEATURE_NAMES},
    "age": DataType.FLOAT,
    "income": DataType.FLOAT,
    "region": DataType.STRING,
    "city": DataType.STRING,
    "gender": DataType.STRING,
    "segment": DataType.FLOAT,
    "segment_label": DataType.STRING,
}

#: The names of :data:`ATTRIBUTES` that are text (for error messages).
TEXT_NAMES = tuple(name for name, kind in ATTRIBUTES.items() if kind == DataType.STRING)
USABLE_NAMES = "the features, age, income, region, city, gender, segment, segment_label"

#: rule-engine builtins (``$name``) a condition may use. The others (``$now``, ``$today``,
#: ``$random``, ``$range`` ...) are refused: membership must be a function of the
#: customer's attributes alone, so that a replay decides the same.
ALLOWED_BUILTINS = frozenset({"abs", "min", "max", "sum", "any", "all", "e", "pi",
                              "re_groups"})

#: ``action`` of an audience change.
ACTIONS = ("enter", "exit")
#: ``trigger`` of an audience change: what made the worker judge the customer again.
TRIGGERS = ("event", "profile", "model_update", "inactivity", "definitions", "erasure",
            "consent")
#: File name endings :meth:`AudienceSet.load` reads, and how.
YAML_SUFFIXES = (".yaml", ".yml")
JSON_SUFFIXES = (".json",)
SCHEMA_FILE = "audiences.schema.json"
#: ``yaml.safe_load``'s loader, in C when PyYAML was built with libyaml (a file of
#: 256 audiences: 6 ms instead of 69).
SAFE_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
#: Hex digits of :attr:`AudienceSet.version`.
VERSION_HEX_DIGITS = 12


class AudienceError(ValueError):
    """Invalid audience definitions; the message names the file, the audience and the problem.

    Attributes
    ----------
    source : str
        The file (or ``<document>``) the definitions came from.
    audience : str or None
        The audience concerned (its name, or ``#N`` by position when it has none), or None
        for a problem of the whole file.
    problem : str
        What is wrong.
    line : int or None
        The line of the file the problem is on (1-based), when the parser tells it (YAML);
        the message then starts ``source:line:``.
    """

    def __init__(self, source: str, audience: str | None, problem: str,
                 line: int | None = None) -> None:
        at = source if line is None else f"{source}:{line}"
        where = f"{at}: audience {audience!r}: " if audience is not None else f"{at}: "
        super().__init__(where + problem)
        self.source = source
        self.audience = audience
        self.problem = problem
        self.line = line


@dataclass(frozen=True, slots=True)
class CompiledCondition:
    """A parsed condition and the attribute names it uses."""

    rule: rule_engine.Rule
    names: tuple[str, ...]


@lru_cache(maxsize=4096)
def compile_condition(text: str) -> CompiledCondition:
    """Parse ``text`` against :data:`ATTRIBUTES`; raise ValueError saying what is wrong.

    Cached by text: a reload of definitions parses only the conditions that changed.

    >>> compile_condition('region == "Almaty" and segment in [3, 7]').names
    ('region', 'segment')
    >>> compile_condition("views_7d")
    Traceback (most recent call last):
    ...
    ValueError: is not a true/false expression (its type is FLOAT)
    """
    context = rule_engine.Context(type_resolver=ATTRIBUTES, default_value=None,
                                  default_timezone="utc")
    # A refused builtin gets no type, so that the type checker accepts it wherever it is
    # (``$now > 1`` would otherwise be "data type mismatch", a DATETIME against a number)
    # and the check below names it: the one reason such a condition is refused.
    typed = context.builtins.resolve_type
    context.builtins.resolve_type = (  # type: ignore[method-assign]
        lambda name: typed(name) if name in ALLOWED_BUILTINS else DataType.UNDEFINED)
    try:
        rule = rule_engine.Rule(text, context=context)
    except rule_engine.SymbolResolutionError as exc:
        raise ValueError(f"unknown name {exc.symbol_name!r} "
                         f"({_suggestion(exc.symbol_name)})") from None
    except rule_engine.RuleSyntaxError as exc:
        token = getattr(exc.token, "value", None)
        at = f" at {token!r}" if token is not None else " (incomplete expression)"
        raise ValueError(f"syntax error{at}") from None
    except rule_engine.EvaluationError as exc:
        raise ValueError(f"{exc.message} (text: {', '.join(TEXT_NAMES)}; every other name is "
                         "a number)") from None
    except rule_engine.EngineError as exc:
        raise ValueError(f"{exc.message}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    refused = sorted(context.symbols - ATTRIBUTES.keys() - ALLOWED_BUILTINS)
    if refused:
        which = (f"builtin ${refused[0]} is" if len(refused) == 1 else
                 f"builtins {', '.join('$' + name for name in refused)} are")
        raise ValueError(f"{which} not allowed: membership must depend only on the "
                         "customer's attributes")
    result_type = rule.statement.expression.result_type
    if result_type != DataType.BOOLEAN:
        raise ValueError(f"is not a true/false expression (its type is {result_type.name})")
    return CompiledCondition(rule, tuple(sorted(context.symbols & ATTRIBUTES.keys())))


def _condition_problem(key: str, text: str, exc: ValueError) -> str:
    """How an invalid condition is reported: ``condition '...': unknown name ...``."""
    return f"{key} {text!r}: {exc}"


def _suggestion(name: str) -> str:
    close = difflib.get_close_matches(name, ATTRIBUTES, n=1, cutoff=0.75)
    return f"did you mean {close[0]!r}?" if close else f"usable names: {USABLE_NAMES}"


@dataclass(frozen=True)
class Audience:
    """One audience: enter when ``condition`` holds, leave when ``exit_condition`` holds.

    Both are parsed when the audience is made (an invalid one raises
    :class:`AudienceError`). Without ``exit_condition`` a member leaves when ``condition``
    no longer holds; with one, a member stays until it holds (hysteresis), and a customer
    enters only when ``condition`` holds and ``exit_condition`` does not.

    >>> browsers = Audience("browsers", "", "views_7d >= 10", "views_7d < 5")
    >>> [browsers.member_after(False, {"views_7d": v}) for v in (4, 7, 10)]
    [False, False, True]
    >>> [browsers.member_after(True, {"views_7d": v}) for v in (4, 7, 10)]
    [False, True, True]
    >>> browsers.names
    ('views_7d',)
    """

    name: str
    description: str
    condition: str
    exit_condition: str | None
    #: Attribute names the conditions use, sorted.
    names: tuple[str, ...] = field(init=False, compare=False)
    _enter: rule_engine.Rule = field(init=False, repr=False, compare=False)
    _exit: rule_engine.Rule | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            enter = compile_condition(self.condition)
        except ValueError as exc:
            raise AudienceError("<audience>", self.name,
                                _condition_problem("condition", self.condition, exc)) from None
        names = set(enter.names)
        exit_rule = None
        if self.exit_condition is not None:
            try:
                leave = compile_condition(self.exit_condition)
            except ValueError as exc:
                raise AudienceError("<audience>", self.name, _condition_problem(
                    "exit_condition", self.exit_condition, exc)) from None
            names.update(leave.names)
            exit_rule = leave.rule
        object.__setattr__(self, "names", tuple(sorted(names)))
        object.__setattr__(self, "_enter", enter.rule)
        object.__setattr__(self, "_exit", exit_rule)

    def holds(self, attributes: Mapping[str, object]) -> bool:
        """Whether ``condition`` holds; False when it cannot be evaluated (null values)."""
        try:
            return self._enter.matches(attributes)
        except Exception:  # any evaluation error: the condition does not hold
            return False

    def exits(self, attributes: Mapping[str, object]) -> bool:
        """Whether a member leaves: ``exit_condition`` holds (default: ``not condition``).

        An ``exit_condition`` that cannot be evaluated does not hold.
        """
        if self._exit is None:
            return not self.holds(attributes)
        try:
            return self._exit.matches(attributes)
        except Exception:  # any evaluation error: the condition does not hold
            return False

    def member_after(self, was_member: bool, attributes: Mapping[str, object]) -> bool:
        """Membership after judging ``attributes``: the hysteresis rule.

        A member stays until it :meth:`exits`; a non-member enters when the condition
        :meth:`holds` and the exit condition does not.
        """
        if self._exit is None:
            return self.holds(attributes)
        if was_member:
            return not self.exits(attributes)
        return self.holds(attributes) and not self.exits(attributes)


@cache
def _validator() -> Any:
    return fastjsonschema.compile(load_schema(SCHEMA_FILE))


def _canonical_version(audiences: Sequence[Audience]) -> str:
    material = orjson.dumps([[a.name, a.condition, a.exit_condition] for a in audiences])
    return hashlib.blake2b(material, digest_size=VERSION_HEX_DIGITS // 2).hexdigest()


class AudienceSet:
    """Validated audience definitions: what :meth:`memberships` judges customers with.

    Attributes
    ----------
    audiences : tuple of Audience
        In the order of the file.
    version : str
        12 hex digits: a digest (blake2b) of the names, conditions and exit conditions in
        order. The same definitions in YAML or JSON have the same version; descriptions,
        comments and formatting do not count.
    source : str
        Where the definitions came from (the file's path, or ``<document>``).
    """

    __slots__ = ("_by_name", "_sorted", "audiences", "source", "version")

    def __init__(self, audiences: Sequence[Audience], source: str = "<document>") -> None:
        self.audiences: tuple[Audience, ...] = tuple(audiences)
        self.source = source
        self.version = _canonical_version(self.audiences)
        self._by_name = {a.name: a for a in self.audiences}
        if len(self._by_name) != len(self.audiences):
            seen: set[str] = set()
            for a in self.audiences:
                if a.name in seen:
                    raise AudienceError(source, a.name, "the name is used twice")
                seen.add(a.name)
        # Evaluated in name order, so memberships come out sorted with no sort per call.
        self._sorted = tuple(sorted(self.audiences, key=lambda a: a.name))

    def __repr__(self) -> str:
        return (f"AudienceSet({len(self.audiences)} audiences, version {self.version}, "
                f"source {self.source!r})")

    def __len__(self) -> int:
        return len(self.audiences)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Audience:
        return self._by_name[name]

    @classmethod
    def empty(cls) -> AudienceSet:
        """No audiences (the version of the empty list).

        >>> AudienceSet.empty().version, len(AudienceSet.empty())
        ('f48212d320c4', 0)
        """
        return cls((), source="<none>")

    @classmethod
    def from_document(cls, document: object, source: str = "<document>") -> AudienceSet:
        """Validate a parsed document (``{"audiences": [...]}``) and compile its conditions.

        Raises
        ------
        AudienceError
            When the document breaks the schema, a name is used twice or a condition is
            invalid; the message names ``source``, the audience and the problem.
        """
        try:
            _validator()(document)
        except fastjsonschema.JsonSchemaValueException as exc:
            raise AudienceError(source, _audience_at(document, exc.path),
                                _schema_problem(exc)) from None
        audiences = []
        for entry in document["audiences"]:  # type: ignore[index]
            try:
                audiences.append(Audience(entry["name"], entry.get("description", ""),
                                          entry["condition"].strip(),
                                          _strip(entry.get("exit_condition"))))
            except AudienceError as exc:
                raise AudienceError(source, exc.audience, exc.problem) from None
        return cls(audiences, source)

    @classmethod
    def load(cls, path: str | Path) -> AudienceSet:
        """Read, validate and compile a definitions file (``.yaml``, ``.yml`` or ``.json``).

        Raises
        ------
        AudienceError
            When the file cannot be read or parsed, or its definitions are invalid.
        """
        path = Path(path)
        return cls.from_document(_read(path)[0], str(path))

    def to_document(self) -> dict[str, Any]:
        """The definitions as a document :meth:`from_document` reads (the same version).

        >>> d = AudienceSet.from_document({"audiences": [{"name": "a", "condition": "age > 1"}]})
        >>> AudienceSet.from_document(d.to_document()).version == d.version
        True
        """
        return {"audiences": [
            {"name": a.name, **({"description": a.description} if a.description else {}),
             "condition": a.condition,
             **({"exit_condition": a.exit_condition} if a.exit_condition is not None else {})}
            for a in self.audiences]}

    def memberships(self, attributes: Mapping[str, object], current: Sequence[str]) -> list[str]:
        """The audiences (sorted names) a customer is in after judging ``attributes``.

        ``current`` are the names it was in before; names of audiences that are no longer
        defined drop out. Never raises on odd attribute values (a condition that cannot be
        evaluated does not hold).
        """
        if len(current) > 8:
            current = frozenset(current)  # type: ignore[assignment]
        return [a.name for a in self._sorted if a.member_after(a.name in current, attributes)]

    def changes(self, current: Sequence[str], after: Sequence[str]
                ) -> tuple[list[str], list[str]]:
        """``(entered, exited)``, each sorted: the difference between two memberships.

        A name of ``current`` that is no longer defined is an exit when it is missing from
        ``after`` (as :meth:`memberships` leaves it out): the customer is not in it any
        more, and subscribers that keep member lists stay right.

        >>> AudienceSet.empty().changes(["b", "gone"], ["a", "b"])
        (['a'], ['gone'])
        """
        before, now = set(current), set(after)
        return sorted(now - before), sorted(before - now)


def _read(path: Path) -> tuple[object, bytes]:
    """The parsed document of a definitions file and its bytes; :class:`AudienceError` when
    it cannot be read or parsed."""
    source = str(path)
    suffix = path.suffix.lower()
    if suffix not in YAML_SUFFIXES + JSON_SUFFIXES:
        raise AudienceError(source, None, f"unknown file type {path.suffix!r} (use one of "
                            f"{', '.join(YAML_SUFFIXES + JSON_SUFFIXES)})")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AudienceError(source, None, f"cannot read the file: {exc.strerror}") from None
    if suffix in JSON_SUFFIXES:
        try:
            return orjson.loads(raw), raw
        except orjson.JSONDecodeError as exc:
            raise AudienceError(source, None, f"invalid JSON: {exc}") from None
    try:
        return yaml.load(raw, Loader=SAFE_YAML_LOADER), raw  # safe: no Python objects
    except yaml.YAMLError as exc:
        raise AudienceError(source, None, f"invalid YAML: {_yaml_problem(exc)}") from None


def _yaml_lines(raw: bytes) -> dict[tuple[int, str | None], int]:
    """Lines (1-based) of a YAML definitions file: ``(i, key)`` is where the value of
    ``key`` of the ``i``-th audience starts, ``(i, None)`` where that audience starts.
    Empty when the file is not laid out as ``audiences: [mapping, ...]``."""
    try:
        root = yaml.compose(raw, Loader=SAFE_YAML_LOADER)
    except yaml.YAMLError:
        return {}
    lines: dict[tuple[int, str | None], int] = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key, value in root.value:
        if key.value != "audiences" or not isinstance(value, yaml.SequenceNode):
            continue
        for i, entry in enumerate(value.value):
            lines[(i, None)] = entry.start_mark.line + 1
            if isinstance(entry, yaml.MappingNode):
                for k, v in entry.value:
                    lines[(i, str(k.value))] = v.start_mark.line + 1
    return lines


def check_document(document: object, source: str = "<document>",
                   lines: Mapping[tuple[int, str | None], int] | None = None
                   ) -> list[AudienceError]:
    """Every problem of a definitions document, not only the first: what
    ``stream-app audiences check`` lists. Empty when :meth:`AudienceSet.from_document`
    accepts it.

    The file as a whole is judged first (not a mapping, unknown top-level keys, more than
    256 audiences); then every audience on its own: its entry against the schema, then its
    ``condition`` and ``exit_condition`` each parsed and type-checked; then names used
    twice. ``lines`` (from the YAML parser, see :func:`_yaml_lines`) puts the line of each
    problem into its message.

    >>> for e in check_document({"audiences": [
    ...         {"name": "a", "condition": "$now > 1"},
    ...         {"name": "b", "condition": "regoin == 'x'", "exit_condition": "views_7d"},
    ...         {"name": "a", "condition": "views_7d > 1", "exit_conditon": "x"}]}):
    ...     print(e)
    <document>: audience 'a': condition '$now > 1': builtin $now is not allowed: ...
    <document>: audience 'b': condition "regoin == 'x'": unknown name 'regoin' (did you ...
    <document>: audience 'b': exit_condition 'views_7d': is not a true/false expression ...
    <document>: audience 'a': the name is used twice
    <document>: audience 'a': the entry must not contain {'exit_conditon'} properties
    """
    lines = lines or {}
    try:
        _validator()(document)
    except fastjsonschema.JsonSchemaValueException as exc:
        entries = document.get("audiences") if isinstance(document, dict) else None
        if not isinstance(entries, list):  # nothing to look into
            return [AudienceError(source, None, _schema_problem(exc))]
    else:
        entries = document["audiences"]  # type: ignore[index]
    errors: list[AudienceError] = []
    try:  # the document around the audiences (top-level keys, their number)
        _validator()({**document, "audiences": []})  # type: ignore[dict-item]
    except fastjsonschema.JsonSchemaValueException as exc:
        errors.append(AudienceError(source, None, _schema_problem(exc)))
    try:
        _validator()({"audiences": [{"name": "x", "condition": "x"}] * len(entries)})
    except fastjsonschema.JsonSchemaValueException as exc:
        errors.append(AudienceError(source, None, _schema_problem(exc)))
    names: dict[str, int] = {}
    for i, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        label = name if isinstance(name, str) else f"#{i + 1}"
        if label in names:
            errors.append(AudienceError(source, label, "the name is used twice",
                                        lines.get((i, "name"))))
        names.setdefault(label, i)
        try:
            _validator()({"audiences": [entry]})
        except fastjsonschema.JsonSchemaValueException as exc:
            key = str(exc.path[3]) if len(exc.path) > 3 else None
            errors.append(AudienceError(source, label, _schema_problem(exc),
                                        lines.get((i, key)) or lines.get((i, None))))
            continue
        for key in ("condition", "exit_condition"):
            text = _strip(entry.get(key))
            if text is None:
                continue
            try:
                compile_condition(text)
            except ValueError as exc:
                errors.append(AudienceError(source, label, _condition_problem(key, text, exc),
                                            lines.get((i, key))))
    return errors


def check_file(path: str | Path) -> tuple[AudienceSet | None, list[AudienceError]]:
    """Read a definitions file as :meth:`AudienceSet.load` does and list every problem
    (:func:`check_document`, with YAML line numbers): ``(definitions, [])`` when it
    loads, ``(None, problems)`` when not."""
    path = Path(path)
    try:
        document, raw = _read(path)
    except AudienceError as exc:
        return None, [exc]
    lines = _yaml_lines(raw) if path.suffix.lower() in YAML_SUFFIXES else {}
    errors = check_document(document, str(path), lines)
    if errors:
        return None, errors
    try:  # the worker's own path decides, so that check and worker never disagree
        return AudienceSet.from_document(document, str(path)), []
    except AudienceError as exc:
        return None, [exc]


def _strip(text: str | None) -> str | None:
    return None if text is None else text.strip()


def _audience_at(document: object, path: Sequence[object]) -> str | None:
    """The audience a schema error is about: its name, else ``#N`` (1-based), else None.

    ``path`` is fastjsonschema's, e.g. ``["data", "audiences", "2", "condition"]``.
    """
    if len(path) < 3 or path[1] != "audiences" or not str(path[2]).isdigit():
        return None
    index = int(str(path[2]))
    entry = document["audiences"][index]  # type: ignore[index]
    name = entry.get("name") if isinstance(entry, dict) else None
    return name if isinstance(name, str) else f"#{index + 1}"


def _schema_problem(exc: fastjsonschema.JsonSchemaValueException) -> str:
    """fastjsonschema's message with the audience's path left out (the error names it).

    ``data.audiences[2].name must match ...`` becomes ``name must match ...``.
    """
    message = exc.message
    subject = exc.name or ""
    if not message.startswith(subject):
        return message
    rest = message[len(subject):]
    inner = re.sub(r"^data\.audiences\[\d+\]\.?", "", subject)
    if inner != subject:
        return (inner or "the entry") + rest
    if subject == "data":
        return "the document" + rest
    return subject.removeprefix("data.") + rest


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(exc)


def describe(audience_set: AudienceSet) -> str:
    """A header line, then one line per audience: name, condition, exit condition, names used.

    >>> print(describe(AudienceSet.from_document({"audiences": [
    ...     {"name": "browsers", "condition": "views_7d >= 10",
    ...      "exit_condition": "views_7d < 5"}]})))
    <document>: 1 audience, definitions version ...
    browsers  enter: views_7d >= 10  exit: views_7d < 5  uses: views_7d
    """
    count = len(audience_set)
    lines = [f"{audience_set.source}: {count} audience{'s' if count != 1 else ''}, "
             f"definitions version {audience_set.version}"]
    for a in audience_set.audiences:
        leave = a.exit_condition if a.exit_condition is not None else "(enter no longer holds)"
        lines.append(f"{a.name}  enter: {a.condition}  exit: {leave}  "
                     f"uses: {', '.join(a.names) or '-'}")
    return "\n".join(lines)


@dataclass(slots=True)
class AudienceChange:
    """A customer's entry into or exit from an audience (``schemas/audience-change.schema.json``).

    >>> c = AudienceChange("c-17", "lapsed-vip-almaty", "enter", 1795514400000, "event",
    ...                    "e-9", "3f2a9c1d0b7e", 3, "frequent buyer")
    >>> c.event_id == AudienceChange("c-17", "lapsed-vip-almaty", "enter", 0, "event",
    ...                              "e-9", "000000000000", None, None).event_id
    True
    >>> orjson.loads(c.to_json(emitted_at=0.0))["ts"]
    '2026-11-24T10:00:00.000Z'
    """

    customer_id: str
    audience: str
    action: str  # "enter" | "exit"
    ts: int  # event time of the cause, epoch ms
    trigger: str
    cause_id: str | int  # the triggering event or control request id, or its event_digest
    definitions_version: str
    segment: int | None
    segment_label: str | None

    @property
    def event_id(self) -> str:
        """Deterministic: the same customer, audience, action, trigger and cause give the
        same id, so a change re-sent after a crash keeps it (the definitions version is
        not part of it)."""
        return deterministic_id(self.customer_id, self.audience, self.action, self.trigger,
                                cause_digest(self.cause_id))

    def to_json(self, emitted_at: float | None = None) -> bytes:
        """The message of ``audience-changes``; ``emitted_at`` in epoch seconds (default: now)."""
        return orjson.dumps({
            "event_id": self.event_id,
            "customer_id": self.customer_id,
            "audience": self.audience,
            "action": self.action,
            "ts": iso_ms(self.ts),
            "emitted_at": iso_ms((time.time() if emitted_at is None else emitted_at) * 1000),
            "trigger": self.trigger,
            "definitions_version": self.definitions_version,
            "segment": self.segment,
            "segment_label": self.segment_label,
        })
