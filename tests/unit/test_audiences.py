"""Audience definitions, conditions, membership and the audience-change message (no broker).

The pure module ``stream_app.core.audiences``: what a definitions file may say and how a bad one
is reported, how conditions decide with null values, that membership does not flap, and
that the message of ``audience-changes`` keeps its contract.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator

from stream_app.core.audiences import (
    ACTIONS,
    ATTRIBUTES,
    TRIGGERS,
    Audience,
    AudienceChange,
    AudienceError,
    AudienceSet,
    describe,
)
from stream_app.core.features import FEATURE_NAMES
from stream_app.core.schemas import load_schema
from stream_app.core.validation import PROFILE_FIELDS
from stream_app.tools.batch import recompute
from stream_app.tools.generator import SyntheticShop

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "audiences.yaml"
CHANGE_SCHEMA = Draft7Validator(load_schema("audience-change.schema.json"))
DEFINITIONS_SCHEMA = Draft7Validator(load_schema("audiences.schema.json"))
ISO_MS_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

DEFINITIONS = {"audiences": [
    {"name": "lapsed-vip-almaty", "description": "VIPs in Almaty, no order for a month",
     "condition": 'segment in [3, 7] and days_since_last_order > 30 and region == "Almaty"',
     "exit_condition": "days_since_last_order < 7"},
    {"name": "heavy-browsers", "condition": "views_7d >= 10", "exit_condition": "views_7d < 5"},
    {"name": "app-users", "condition": "app_share_30d > 0.5"},
]}


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, name: str, text: str) -> str:
    """The message of the AudienceError that loading ``text`` as file ``name`` raises."""
    path = write(tmp_path, name, text)
    with pytest.raises(AudienceError) as caught:
        AudienceSet.load(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message  # every message names the file
    return message


# -- the names a condition may use ---------------------------------------------------------

def test_attributes_are_the_features_the_profile_and_the_segment() -> None:
    profile_schema = load_schema("customer-profile.schema.json")["properties"]
    expected = {*FEATURE_NAMES, *PROFILE_FIELDS, "segment", "segment_label"}
    assert set(ATTRIBUTES) == expected
    for name in PROFILE_FIELDS:
        declared = profile_schema[name]["type"]
        kind = "STRING" if "string" in declared else "FLOAT"
        assert ATTRIBUTES[name].name == kind, name
    assert all(ATTRIBUTES[name].name == "FLOAT" for name in FEATURE_NAMES)


# -- load errors: each names the file, the audience and the problem ------------------------

def test_unknown_name_is_an_error_at_load_naming_the_audience(tmp_path: Path) -> None:
    message = load_error(tmp_path, "a.yaml", """
audiences:
  - name: fine
    condition: views_7d > 3
  - name: typo
    condition: views_7d > 3 and regoin == "Almaty"
""")
    assert "audience 'typo'" in message
    assert "unknown name 'regoin'" in message and "did you mean 'region'" in message
    with pytest.raises(AudienceError, match=r"unknown name 'basket_size' \(usable names: the "
                                            r"features, age, income, region"):
        Audience("x", "", "basket_size > 3", None)


def test_type_mismatch_is_an_error_at_load(tmp_path: Path) -> None:
    message = load_error(tmp_path, "a.yaml", """
audiences:
  - name: odd
    condition: region > 3
""")
    assert "audience 'odd'" in message and "region > 3" in message
    assert "type mismatch" in message and "region" in message


def test_bad_exit_condition_is_reported_as_the_exit_condition(tmp_path: Path) -> None:
    message = load_error(tmp_path, "a.yaml", """
audiences:
  - name: browsers
    condition: views_7d >= 10
    exit_condition: views_7d < "five"
""")
    assert "audience 'browsers': exit_condition" in message


def test_duplicate_name_is_an_error(tmp_path: Path) -> None:
    message = load_error(tmp_path, "a.yaml", """
audiences:
  - {name: twice, condition: views_7d > 3}
  - {name: once, condition: views_7d > 4}
  - {name: twice, condition: views_7d > 5}
""")
    assert "audience 'twice'" in message and "used twice" in message


def test_bad_yaml_names_the_line(tmp_path: Path) -> None:
    message = load_error(tmp_path, "a.yml", "audiences:\n  - name: x\n   condition: [\n")
    assert "invalid YAML" in message and "line 3" in message


def test_yaml_cannot_build_python_objects(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    message = load_error(tmp_path, "a.yaml",
                         f'audiences: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert "invalid YAML" in message and "python/object" in message
    assert not marker.exists()


def test_bad_json_is_an_error(tmp_path: Path) -> None:
    assert "invalid JSON" in load_error(tmp_path, "a.json", '{"audiences": [}')


@pytest.mark.parametrize("name", ["Big-Spenders", "-lead", "has space", "é", "x" * 65, ""])
def test_bad_name_is_an_error(tmp_path: Path, name: str) -> None:
    text = orjson.dumps({"audiences": [{"name": name, "condition": "views_7d > 3"}]}).decode()
    message = load_error(tmp_path, "a.json", text)
    assert f"audience {name!r}: name must match pattern" in message


@pytest.mark.parametrize(("text", "problem"), [
    ("- name: x\n  condition: views_7d > 3\n", "the document must be object"),
    ("{}\n", "must contain ['audiences']"),
    ("audiences: {name: x, condition: views_7d > 3}\n", "audiences must be array"),
    ("audiences: []\nversion: 2\n", "must not contain {'version'}"),
    ("", "the document must be object"),  # an empty YAML file is null
    ("audiences:\n  - just-a-name\n", "audience '#1': the entry must be object"),
    ("audiences:\n  - {name: x}\n", "audience 'x': the entry must contain ['condition']"),
    ("audiences:\n  - {name: x, condition: views_7d > 3, exit_conditon: views_7d < 1}\n",
     "audience 'x': the entry must not contain {'exit_conditon'}"),
    ("audiences:\n  - {name: x, condition: yes}\n", "audience 'x': condition must be string"),
])
def test_wrong_shape_is_an_error(tmp_path: Path, text: str, problem: str) -> None:
    assert problem in load_error(tmp_path, "a.yaml", text)


def test_at_most_256_audiences(tmp_path: Path) -> None:
    def document(n: int) -> dict:
        return {"audiences": [{"name": f"a{i}", "condition": f"views_7d > {i}"}
                              for i in range(n)]}
    assert len(AudienceSet.from_document(document(256))) == 256
    with pytest.raises(AudienceError, match="less than or equal to 256 items"):
        AudienceSet.from_document(document(257))


def test_missing_file_and_unknown_suffix_are_errors(tmp_path: Path) -> None:
    with pytest.raises(AudienceError, match="cannot read the file"):
        AudienceSet.load(tmp_path / "absent.yaml")
    assert "unknown file type '.txt'" in load_error(tmp_path, "a.txt", "audiences: []")


@pytest.mark.parametrize("condition", [
    '__import__("os")',
    '__import__("os").system("true") == 0',
    'open("/etc/passwd") != null',
    'region.__class__ == "str"',
    "exec",
])
def test_python_is_not_reachable_from_a_condition(condition: str) -> None:
    with pytest.raises(AudienceError) as caught:
        AudienceSet.from_document({"audiences": [{"name": "x", "condition": condition}]})
    assert "audience 'x'" in str(caught.value)


@pytest.mark.parametrize(("condition", "problem"), [
    ("$now != null", "builtin $now is not allowed"),
    ("views_7d > $random(100)", "builtin $random is not allowed"),
    ("views_7d", "not a true/false expression"),
    ('region + "x"', "not a true/false expression"),
    ("views_7d >", "syntax error"),
    ("views_7d > 3 )", "syntax error at ')'"),
    ('region =~ "("', "invalid regular expression"),
])
def test_other_invalid_conditions(condition: str, problem: str) -> None:
    with pytest.raises(AudienceError, match=re.escape(problem)):
        Audience("x", "", condition, None)


def test_usable_builtins_and_coalescing_are_accepted() -> None:
    audience = Audience("x", "", "$abs(views_7d - 10) < 2 and (days_since_last_order ?? 0) < 5",
                        None)
    assert audience.holds({"views_7d": 11}) and not audience.holds({"views_7d": 14})


# -- versions ------------------------------------------------------------------------------

def test_yaml_and_json_of_the_same_definitions_have_the_same_version(tmp_path: Path) -> None:
    as_json = AudienceSet.load(write(tmp_path, "a.json", orjson.dumps(DEFINITIONS).decode()))
    as_yaml = AudienceSet.load(write(tmp_path, "a.yaml",
                                     "# comments do not count\n" + yaml.safe_dump(DEFINITIONS)))
    assert as_yaml.version == as_json.version
    assert re.fullmatch(r"[0-9a-f]{12}", as_yaml.version)
    assert [a.name for a in as_yaml.audiences] == [a["name"] for a in DEFINITIONS["audiences"]]


def test_what_changes_the_version() -> None:
    base = AudienceSet.from_document(DEFINITIONS).version

    def version_with(index: int, **change: object) -> str:
        entries = [dict(a) for a in DEFINITIONS["audiences"]]
        entries[index].update(change)
        return AudienceSet.from_document({"audiences": entries}).version

    assert version_with(1, condition="views_7d >= 11") != base
    assert version_with(1, exit_condition="views_7d < 4") != base
    assert version_with(1, exit_condition=None) != base
    assert version_with(1, name="heavy-browsers-2") != base
    reordered = {"audiences": list(reversed(DEFINITIONS["audiences"]))}
    assert AudienceSet.from_document(reordered).version != base
    assert version_with(0, description="another text") == base
    assert version_with(1, condition="  views_7d >= 10\n") == base  # a YAML block's newline
    assert AudienceSet.empty().version == AudienceSet.from_document({"audiences": []}).version
    assert AudienceSet.empty().version != base


# -- null semantics ------------------------------------------------------------------------

def test_a_comparison_with_null_does_not_hold() -> None:
    lapsed = Audience("lapsed", "", "days_since_last_order > 30", None)
    never_ordered = {"days_since_last_order": None, "orders_total": 0}
    assert not lapsed.holds(never_ordered) and not lapsed.holds({})
    assert lapsed.holds({"days_since_last_order": 31.5})
    # the explicit forms decide what null means
    assert Audience("a", "", "days_since_last_order == null or days_since_last_order > 30",
                    None).holds(never_ordered)
    assert not Audience("b", "", "days_since_last_order != null and days_since_last_order > 30",
                        None).holds(never_ordered)
    # a negation of an undecidable comparison does not hold either
    assert not Audience("c", "", "not (days_since_last_order > 30)", None).holds(never_ordered)
    # equality with null is decidable: no segment yet is not segment 3
    assert not Audience("d", "", "segment in [3, 7]", None).holds({"segment": None})
    assert Audience("e", "", 'region != "Almaty"', None).holds({})


def test_null_and_the_exit_condition() -> None:
    explicit = Audience("x", "", "days_since_last_order > 30", "days_since_last_order < 7")
    implicit = Audience("y", "", "days_since_last_order > 30", None)
    unknown = {"days_since_last_order": None}
    assert explicit.member_after(True, unknown)  # the exit cannot be judged: stays
    assert not implicit.member_after(True, unknown)  # the condition does not hold: leaves
    assert not explicit.member_after(False, unknown) and not implicit.member_after(False, unknown)


# -- hysteresis ----------------------------------------------------------------------------

def replay_changes(audience_set: AudienceSet, values: list[dict]) -> list[tuple[str, str]]:
    """Judge a customer once per attribute dict; every (action, audience) in order."""
    members: list[str] = []
    out = []
    for attributes in values:
        after = audience_set.memberships(attributes, members)
        entered, exited = audience_set.changes(members, after)
        out += [("enter", name) for name in entered] + [("exit", name) for name in exited]
        members = after
    return out


def test_no_flapping_between_the_enter_and_exit_thresholds() -> None:
    browsers = AudienceSet.from_document({"audiences": [DEFINITIONS["audiences"][1]]})
    # below both thresholds, then up and down between 5 and 12 for a while
    oscillating = [{"views_7d": v} for v in [3] + [9, 10, 6, 11, 5, 9, 12, 5, 10, 7] * 10]
    assert replay_changes(browsers, oscillating) == [("enter", "heavy-browsers")]
    falls = [*oscillating, {"views_7d": 4}, {"views_7d": 9}, {"views_7d": 10}]
    assert replay_changes(browsers, falls) == [
        ("enter", "heavy-browsers"), ("exit", "heavy-browsers"), ("enter", "heavy-browsers")]


def test_without_exit_condition_membership_follows_the_condition() -> None:
    app_users = AudienceSet.from_document({"audiences": [DEFINITIONS["audiences"][2]]})
    values = [{"app_share_30d": v} for v in (0.4, 0.6, 0.6, 0.5, 0.9)]
    assert replay_changes(app_users, values) == [
        ("enter", "app-users"), ("exit", "app-users"), ("enter", "app-users")]


def test_entering_needs_the_condition_and_not_the_exit_condition() -> None:
    contradictory = Audience("x", "", "views_7d >= 10", "orders_30d > 0")
    assert not contradictory.member_after(False, {"views_7d": 12, "orders_30d": 1})
    assert contradictory.member_after(False, {"views_7d": 12, "orders_30d": 0})
    assert not contradictory.member_after(True, {"views_7d": 12, "orders_30d": 1})


# -- memberships and changes ---------------------------------------------------------------

def test_memberships_are_sorted_and_judge_each_audience() -> None:
    audiences = AudienceSet.from_document(DEFINITIONS)
    vip = {"segment": 7, "days_since_last_order": 45.0, "region": "Almaty", "views_7d": 30,
           "app_share_30d": 0.9}
    assert audiences.memberships(vip, []) == ["app-users", "heavy-browsers", "lapsed-vip-almaty"]
    assert audiences.memberships({**vip, "segment": 4}, []) == ["app-users", "heavy-browsers"]
    # a member of lapsed-vip-almaty stays at 20 days (exit below 7)
    assert audiences.memberships({**vip, "days_since_last_order": 20.0, "app_share_30d": 0.1},
                                 ["lapsed-vip-almaty"]) == ["heavy-browsers", "lapsed-vip-almaty"]


def test_removed_audiences_drop_out_and_are_exits() -> None:
    old = AudienceSet.from_document(DEFINITIONS)
    new = AudienceSet.from_document({"audiences": DEFINITIONS["audiences"][1:]})
    customer = {"segment": 3, "days_since_last_order": 40.0, "region": "Almaty",
                "views_7d": 12, "app_share_30d": 0.1}
    before = old.memberships(customer, [])
    assert before == ["heavy-browsers", "lapsed-vip-almaty"]
    after = new.memberships(customer, before)
    assert after == ["heavy-browsers"]
    assert new.changes(before, after) == ([], ["lapsed-vip-almaty"])
    # a name that was never defined anywhere drops out the same way
    assert new.memberships(customer, ["ghost", "heavy-browsers"]) == ["heavy-browsers"]
    # with no audiences every membership ends
    assert AudienceSet.empty().memberships(customer, before) == []
    assert AudienceSet.empty().changes(before, []) == ([], before)


def test_changes_are_sorted_set_differences() -> None:
    audiences = AudienceSet.from_document(DEFINITIONS)
    assert audiences.changes(["b", "d", "a"], ["c", "a", "e"]) == (["c", "e"], ["b", "d"])
    assert audiences.changes([], []) == ([], [])


def test_many_current_memberships() -> None:
    audiences = AudienceSet.from_document({"audiences": [
        {"name": f"a{i:02d}", "condition": f"views_7d >= {i}", "exit_condition": "views_7d < 1"}
        for i in range(30)]})
    everything = [f"a{i:02d}" for i in range(30)]
    assert audiences.memberships({"views_7d": 2}, everything) == everything
    assert audiences.memberships({"views_7d": 2}, []) == ["a00", "a01", "a02"]


# -- the audience-change message -----------------------------------------------------------

def change(**override: object) -> AudienceChange:
    fields: dict = {"customer_id": "c-17", "audience": "lapsed-vip-almaty", "action": "enter",
                    "ts": 1_795_514_400_000, "trigger": "event", "cause_id": "e-42",
                    "definitions_version": "3f2a9c1d0b7e", "segment": 3,
                    "segment_label": "frequent buyer · big basket"}
    fields.update(override)
    return AudienceChange(**fields)


def test_event_id_is_deterministic() -> None:
    first = change().event_id
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", first)
    # a re-send of the same cause: same id, whatever the time, version or segment
    assert change(ts=0, definitions_version="000000000000", segment=None,
                  segment_label=None).event_id == first
    others = [change(cause_id="e-43"), change(action="exit"), change(audience="other"),
              change(customer_id="c-18"), change(trigger="profile")]
    ids = {first, *(c.event_id for c in others)}
    assert len(ids) == 1 + len(others)


def test_to_json_keeps_the_contract() -> None:
    for action in ACTIONS:
        for trigger in TRIGGERS:
            for segment, label in ((3, "deal seeker"), (None, None)):
                doc = orjson.loads(change(action=action, trigger=trigger, segment=segment,
                                          segment_label=label).to_json())
                errors = [e.message for e in CHANGE_SCHEMA.iter_errors(doc)]
                assert errors == [], errors
                assert ISO_MS_UTC.match(doc["ts"]) and ISO_MS_UTC.match(doc["emitted_at"])
    doc = orjson.loads(change().to_json(emitted_at=1_795_514_400.123))
    assert doc == {"event_id": change().event_id, "customer_id": "c-17",
                   "audience": "lapsed-vip-almaty", "action": "enter",
                   "ts": "2026-11-24T10:00:00.000Z", "emitted_at": "2026-11-24T10:00:00.123Z",
                   "trigger": "event", "definitions_version": "3f2a9c1d0b7e", "segment": 3,
                   "segment_label": "frequent buyer · big basket"}
    assert datetime.fromisoformat(doc["ts"].replace("Z", "+00:00")).year == 2026


def test_the_schema_refuses_a_broken_message() -> None:
    good = orjson.loads(change().to_json())
    for broken in ({**good, "action": "join"}, {**good, "trigger": "cron"},
                   {**good, "definitions_version": "xyz"}, {**good, "event_id": "e-1"},
                   {k: v for k, v in good.items() if k != "audience"}):
        assert list(CHANGE_SCHEMA.iter_errors(broken)), broken


# -- never raises on odd attribute values --------------------------------------------------

odd_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.binary(max_size=8), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
attribute_names = st.one_of(st.sampled_from(sorted(ATTRIBUTES)), st.text(max_size=12))
ODD_CASES = AudienceSet.from_document({"audiences": [
    *DEFINITIONS["audiences"],
    {"name": "text", "condition": 'city =~ "^Al" and gender in ["f", "x"] and '
                                  'segment_label != null and segment_label.length > 3'},
    {"name": "money", "condition": "revenue_90d / (orders_90d ?? 1) > 50 and age >= 18",
     "exit_condition": "income < 1000 or $abs(first_order_ts - last_order_ts) > 10"},
]})


@settings(max_examples=400, deadline=None)
@given(attributes=st.dictionaries(attribute_names, odd_values, max_size=12),
       current=st.lists(st.one_of(st.sampled_from([a.name for a in ODD_CASES.audiences]),
                                  st.text(max_size=8)), max_size=6))
def test_random_attribute_values_never_raise(attributes: dict, current: list[str]) -> None:
    for audiences in (ODD_CASES, AudienceSet.load(EXAMPLE)):
        after = audiences.memberships(attributes, current)
        assert after == sorted(after) and set(after) <= {a.name for a in audiences.audiences}
        entered, exited = audiences.changes(current, after)
        assert not set(entered) & set(exited)


# -- the example file ----------------------------------------------------------------------

def test_the_example_file_loads_and_uses_only_known_names() -> None:
    examples = AudienceSet.load(EXAMPLE)
    document = yaml.safe_load(EXAMPLE.read_text())
    assert list(DEFINITIONS_SCHEMA.iter_errors(document)) == []
    assert 3 <= len(examples) <= 5
    used = {name for audience in examples.audiences for name in audience.names}
    assert used <= set(ATTRIBUTES)
    assert {"segment", "region"} <= used
    assert any(a.exit_condition for a in examples.audiences)
    text = describe(examples)
    assert text.splitlines()[0] == (f"{EXAMPLE}: {len(examples)} audiences, definitions "
                                    f"version {examples.version}")
    for audience, line in zip(examples.audiences, text.splitlines()[1:]):
        assert line.startswith(f"{audience.name}  enter: {audience.condition}  exit: ")
        assert line.endswith("uses: " + ", ".join(audience.names))


def test_the_example_audiences_find_their_customers_in_the_synthetic_shop() -> None:
    """Three days of the demo's traffic (2,000 customers, an event every 4.8 s of event time):
    every audience that does not need a segment has members, and they are the planted type
    the audience is meant for."""
    examples = AudienceSet.load(EXAMPLE)
    shop = SyntheticShop(2000, seed=11, start_ms=1_790_000_000_000, step_ms=4800)
    customers = recompute(orjson.loads(e.value) for e in shop.events(3 * 18_000))
    members: dict[str, list[str]] = {a.name: [] for a in examples.audiences}
    for customer_id, customer in customers.items():
        attributes = {**customer.features(), **customer.profile, "segment": None,
                      "segment_label": None}
        for name in examples.memberships(attributes, []):
            members[name].append(shop.planted[customer_id])
    meant_for = {"big-spenders-almaty": "big_spender",
                 "browsers-who-never-buy": "window_shopper",
                 "night-app-shoppers": "night_app_user",
                 "deal-seekers-south": "bargain_hunter"}
    for name, planted in meant_for.items():
        assert len(members[name]) >= 20, (name, len(members[name]))
        share = members[name].count(planted) / len(members[name])
        assert share >= 0.9, (name, share)
    assert members["lapsed-vip"] == []  # needs a segment: none offline
