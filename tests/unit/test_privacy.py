"""Privacy without a broker: pseudonymisation, erasure and consent in the pipeline.

The end-to-end proofs (tables, changelogs, topics, logs and the API of a running worker)
are in tests/integration/test_privacy_integration.py.
"""

from __future__ import annotations

import base64

import orjson
import pytest

from stream_app.config import Settings
from stream_app.core.pipeline import EXCLUDED, UNASSIGNED, CustomerPipeline, member_pseudonym
from stream_app.core.privacy import Pseudonymiser
from stream_app.core.state import CustomerState
from stream_app.model.quality import CustomerSample
from stream_app.tools.batch import recompute
from stream_app.worker.options import pipeline_options
from tests.factories import (
    MIN_MS,
    T0,
    Customer,
    buyer_customer,
    change_of,
    click_msg,
    learn_model,
    purchase_msg,
    settings,
)

SECRET = "a-long-random-secret"


@pytest.fixture(scope="module")
def model():
    return learn_model()


def erase(c: Customer, request_id: str | None = "r-1", key: bytes | None = None):
    """Send an erasure request for ``c`` (through the pipeline, as the agent does)."""
    body = {"customer_id": c.id, **({"request_id": request_id} if request_id else {})}
    c.offset += 1
    outs = c.pipeline.process_message("erasure", key or c.id.encode(), orjson.dumps(body),
                                      c.stored, "customer-erasure", 0, c.offset)
    assert len(outs) == 1
    out = outs[0]
    if out.erase:
        c.stored = None
    return out


# -- pseudonymisation ---------------------------------------------------------------------


def test_pseudonyms_are_keyed_stable_and_unlinkable_without_the_key():
    p = Pseudonymiser(SECRET)
    assert p.pseudonym("c-1") == Pseudonymiser(SECRET).pseudonym("c-1")
    assert p.pseudonym("c-1") != p.pseudonym("c-2")
    assert p.pseudonym("c-1") != Pseudonymiser(SECRET + "x").pseudonym("c-1")
    assert "c-1" not in p.pseudonym("c-1") and p.pseudonym("c-1").startswith("ps-")
    assert p.key(b"c-1") == p.pseudonym("c-1").encode()
    assert p.key(b"\xff\xfe") != b"\xff\xfe"  # an undecodable key is hashed too
    off = Pseudonymiser("")
    assert not off.enabled and off.pseudonym("c-1") == "c-1" and off.key(b"c-1") == b"c-1"
    assert SECRET not in repr(p)


def test_secrets_are_masked_in_the_settings_repr():
    s = Settings.from_env({"PSEUDONYM_KEY": SECRET, "API_TOKEN": "tok-123"})
    assert SECRET not in repr(s) and "tok-123" not in repr(s)
    assert "pseudonym_key='***'" in repr(s) and "segments_k=32" in repr(s)


def test_with_a_key_no_raw_id_reaches_state_changes_samples_or_dead_letters(model):
    pipeline = CustomerPipeline(pipeline_options(settings(pseudonym_key=SECRET,
                                                          learn_sample_interval_hours=0.01)))
    pipeline.use_model(model)
    raw_id = "alice@example.com"
    alias = Pseudonymiser(SECRET).pseudonym(raw_id)
    assert pipeline.customer_key(raw_id.encode()) == alias.encode()
    c = Customer(pipeline, raw_id)
    outs = [c.buy(T0 + n * 10 * MIN_MS, n, 20.0) for n in range(3)]
    outs += [c.click(T0 + 40 * MIN_MS + n * MIN_MS, n) for n in range(3)]
    changes = [change_of(o) for o in outs if o.change is not None]
    samples = [orjson.loads(o.sample) for o in outs if o.sample is not None]
    assert changes and samples
    assert {ch["customer_id"] for ch in changes} == {alias}
    assert {s["member"] for s in samples} == {member_pseudonym(alias)}
    everything = b"".join(o.state or b"" for o in outs) + b"".join(
        o.change or b"" for o in outs) + b"".join(o.sample or b"" for o in outs)
    assert raw_id.encode() not in everything and b"alice" not in everything

    # Rejected input: the dead letter names the customer by pseudonym, or keeps no value.
    bad = orjson.dumps({"event_id": "x", "customer_id": raw_id, "ts": "yesterday",
                        "event_type": "page_view"})
    dead = orjson.loads(c.send("click", bad).dlq)
    assert dead["reason"] == "invalid_timestamp" and dead["key"] == alias
    assert orjson.loads(dead["value"])["customer_id"] == alias
    garbage = c.send("click", b"not json from " + raw_id.encode())
    dead = orjson.loads(garbage.dlq)
    assert dead["reason"] == "invalid_json" and dead["value"] is None
    assert dead["value_base64"] is None and raw_id not in garbage.dlq.decode()
    outs = pipeline.process_message("click", raw_id.encode(),
                                    orjson.dumps([orjson.loads(bad), {"customer_id": 7}]),
                                    c.stored, "clickstream", 0, 99)
    assert len(outs) == 2 and all(o.dlq is not None for o in outs)
    assert all(raw_id.encode() not in o.dlq for o in outs)


def test_with_a_key_dead_letters_name_no_raw_id_in_any_field_or_encoding(model):
    """Ids in event, session, order and request ids, nested fields, object keys, the detail
    and arrays are pseudonymised; a value that is not JSON is withheld (its size kept)."""
    pipeline = CustomerPipeline(pipeline_options(settings(pseudonym_key=SECRET)))
    pipeline.use_model(model)
    p = Pseudonymiser(SECRET)
    raw_id, other = "c11-0000042", "c11-0000777"
    c = Customer(pipeline, raw_id)
    hostile = {"event_id": f"{raw_id}-e17", "customer_id": raw_id, "ts": f"at {raw_id}",
               "event_type": "page_view", "session_id": f"s-{raw_id}",
               "meta": {"ref": f"https://shop/?u={raw_id}", raw_id: [f"x{raw_id}y", 3],
                        "customer_id": other, "order_id": 99},
               "query": f"{other} and {raw_id}"}
    outs = [c.send("click", orjson.dumps(hostile)),
            c.send("purchase", orjson.dumps({**hostile, "order_id": f"o-{raw_id}",
                                             "amount": -1})),
            c.send("click", b"not json " + raw_id.encode() + b" \xff"),
            c.send("click", orjson.dumps(f"just {raw_id}"))]
    outs += pipeline.process_message("click", raw_id.encode(),
                                     orjson.dumps([hostile, {"customer_id": raw_id}]),
                                     c.stored, "clickstream", 0, 99)
    dead = [orjson.loads(o.dlq) for o in outs if o.dlq is not None]
    assert len(dead) == 6
    for record, out in zip(dead, [o for o in outs if o.dlq is not None]):
        assert raw_id.encode() not in out.dlq and other.encode() not in out.dlq, record
        for field in ("key_base64", "value_base64"):
            if record[field] is not None:
                decoded = base64.b64decode(record[field])
                assert raw_id.encode() not in decoded and other.encode() not in decoded
        assert record["key"] == p.pseudonym(raw_id)
    first = orjson.loads(dead[0]["value"])
    assert dead[0]["redaction"] == "pseudonymised" and dead[0]["reason"] == "invalid_timestamp"
    assert first["event_id"] == p.pseudonym(f"{raw_id}-e17")
    assert first["session_id"] == p.pseudonym(f"s-{raw_id}")
    assert first["meta"]["customer_id"] == p.pseudonym(other)
    assert first["meta"]["order_id"] == p.pseudonym("99")
    assert first["query"] == f"{p.pseudonym(other)} and {p.pseudonym(raw_id)}"
    assert first["meta"][p.pseudonym(raw_id)] == [f"x{p.pseudonym(raw_id)}y", 3]
    assert p.pseudonym(raw_id) in dead[0]["detail"]  # the ts detail quotes the value
    garbage = dead[2]
    assert garbage["reason"] == "invalid_json" and garbage["redaction"] == "withheld"
    assert garbage["value"] is None and garbage["value_base64"] is None
    assert garbage["original_bytes"] == len(b"not json " + raw_id.encode() + b" \xff")


def test_without_a_key_ids_are_kept(model):
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = buyer_customer(pipeline, model)
    assert pipeline.customer_key(b"buyer") == b"buyer"
    assert c.state.segment is not None


# -- erasure ------------------------------------------------------------------------------


def test_erasure_deletes_the_state_and_publishes_a_last_change(model):
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = buyer_customer(pipeline, model)
    segment = c.state.segment
    out = erase(c)
    assert out.erase and out.event_type == "erasure"
    assert out.state is None and out.moved == (segment, None)
    change = change_of(out)
    assert change["segment"] is None and change["previous_segment"] == segment
    assert change["trigger"] == "erasure" and change["features"] == {}
    assert change["customer_id"] == "buyer"
    assert orjson.loads(out.sample) == {"forget": member_pseudonym("buyer")}
    # The same request again (a redelivery before the deletion was stored) is the same
    # change, so subscribers drop it by event_id.
    again = CustomerPipeline(pipeline_options(settings()))
    again.use_model(model)
    twin = buyer_customer(again, model)
    assert orjson.loads(erase(twin).change)["event_id"] == change["event_id"]
    # Nothing stored any more: a second request deletes nothing and says nothing.
    out = erase(c)
    assert not out.erase and out.change is None and out.moved is None


def test_erasure_of_a_customer_without_a_segment_deletes_without_a_change(model):
    pipeline = CustomerPipeline(pipeline_options(settings(segment_min_events=5)))
    pipeline.use_model(model)
    c = Customer(pipeline, "new")
    c.click(T0, 1)
    assert c.state.segment is None
    out = erase(c, request_id=None)
    assert out.erase and out.change is None and out.moved == (UNASSIGNED, None)


def test_an_erasure_request_must_be_keyed_by_its_customer(model):
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = buyer_customer(pipeline, model)
    out = erase(c, key=b"someone-else")
    assert not out.erase and out.reason == "key_mismatch" and out.dlq is not None
    assert c.stored is not None


# -- consent ------------------------------------------------------------------------------


def test_withdrawn_consent_leaves_the_segment_and_keeps_nothing(model):
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = buyer_customer(pipeline, model)
    c.profile(T0 + 3 * MIN_MS, city="Almaty", age=41)
    segment = c.state.segment
    out = c.profile(T0 + 60 * MIN_MS, consent={"segmentation": False})
    change = change_of(out)
    assert change["segment"] is None and change["previous_segment"] == segment
    assert change["trigger"] == "consent" and out.moved == (segment, EXCLUDED)
    assert orjson.loads(out.sample) == {"forget": member_pseudonym("buyer")}
    assert orjson.loads(c.stored) == {"x": True, "pt": T0 + 60 * MIN_MS, "pp": 0}  # minimal
    assert c.state.excluded and c.state.segment is None and c.state.profile == {}

    # Behaviour and attributes are not kept; no segment changes while excluded.
    for n, out in enumerate([c.buy(T0 + 70 * MIN_MS, 9), c.click(T0 + 71 * MIN_MS, 9),
                             c.profile(T0 + 72 * MIN_MS, city="Paris")]):
        assert out.change is None and out.sample is None and out.excluded, n
    assert c.state.window.event_count() == 0 and c.state.profile == {}
    assert pipeline.rescore("buyer", c.stored).change is None
    assert pipeline.sweep("buyer", c.stored, T0 + 40 * 24 * 60 * MIN_MS).change is None
    # An older update cannot give consent back (last writer wins by event time).
    assert c.profile(T0 + 30 * MIN_MS, consent={"segmentation": True}).late
    assert c.state.excluded

    # Consent given again: the customer starts afresh.
    c.profile(T0 + 80 * MIN_MS, consent={"segmentation": True}, city="Paris")
    assert not c.state.excluded and c.state.profile == {"city": "Paris"}
    outs = [c.buy(T0 + (90 + n) * MIN_MS, 20 + n, 20.0) for n in range(3)]
    assert c.features["orders_total"] == 3
    assert any(o.change is not None for o in outs)


def test_a_new_customer_without_consent_is_counted_as_excluded(model):
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    c = Customer(pipeline, "private")
    out = c.profile(T0, consent={"segmentation": False})
    assert out.moved == (None, EXCLUDED) and out.change is None and c.state.excluded
    assert erase(c).moved == (EXCLUDED, None)


def test_consent_rules_agree_with_the_batch_recomputation(model):
    pipeline = CustomerPipeline(pipeline_options(settings()))
    pipeline.use_model(model)
    docs = [orjson.loads(purchase_msg("c9", T0, 1, 10.0)),
            orjson.loads(click_msg("c9", T0 + MIN_MS, 1)),
            {"customer_id": "c9", "ts": T0 + 2 * MIN_MS, "consent": {"segmentation": False}},
            orjson.loads(purchase_msg("c9", T0 + 3 * MIN_MS, 2, 30.0)),
            {"customer_id": "c9", "ts": T0 + 4 * MIN_MS, "region": "north"},
            {"customer_id": "c9", "ts": T0 + 5 * MIN_MS, "consent": {"segmentation": True},
             "region": "south"},
            orjson.loads(purchase_msg("c9", T0 + 6 * MIN_MS, 3, 7.5)),
            # The same click id as before the withdrawal: that memory went with the rest.
            orjson.loads(click_msg("c9", T0 + 7 * MIN_MS, 1))]
    c = Customer(pipeline, "c9")
    for doc in docs:
        kind = "purchase" if "order_id" in doc else "click" if "event_type" in doc else "profile"
        c.send(kind, orjson.dumps(doc))
    batch = recompute(docs)["c9"]
    assert not batch.excluded and batch.profile == c.state.profile == {"region": "south"}
    stream = c.features
    expected = batch.features(c.state.clock)
    for name in ("orders_total", "revenue_total", "views_7d", "orders_90d"):
        assert stream[name] == expected[name], name
    assert stream["orders_total"] == 1 and stream["views_7d"] == 1


# -- the learner's sample -------------------------------------------------------------------


def test_a_forgotten_member_leaves_the_learner_sample():
    sample = CustomerSample(capacity=3)
    for key, value in [("a", 1.0), ("b", 2.0), ("c", 3.0)]:
        sample.add(key, [value])
    assert sample.discard("b") and not sample.discard("b")
    assert sorted(sample.array().ravel().tolist()) == [1.0, 3.0]
    for key, value in [("d", 4.0), ("e", 5.0), ("f", 6.0)]:
        sample.add(key, [value])
    assert len(sample) == 3  # the heap stayed consistent: capacity still holds
    kept = {k for k in "acdef" if k in sample._rows}
    expected = sorted("acdef", key=CustomerSample.priority)[:3]
    assert kept == set(expected)


def test_state_of_an_excluded_customer_round_trips():
    s = CustomerState()
    s.exclude(123)
    again = CustomerState.from_bytes(s.to_bytes())
    assert again.excluded and again.profile_ts == 123 and again.segment is None

