"""Pseudonymisation of customer ids, applied where events enter the worker.

With a secret key (``PSEUDONYM_KEY``), a customer id is replaced by a keyed hash (HMAC-
SHA-256, 128 bits, hex) as soon as the event is validated: tables, changelogs, output
topics, metrics, logs and the API's answers only ever hold the pseudonym. The same key
gives the same pseudonym in every worker and every run, so state and segment changes stay
per customer; without the key, a pseudonym cannot be turned back into an id, nor can an id
be checked against a pseudonym. A system that needs to act on a segment change for a
known customer computes the pseudonym with the same key (:meth:`Pseudonymiser.pseudonym`).

Without a key the ids are kept as they are (:attr:`Pseudonymiser.enabled` is False).

>>> p = Pseudonymiser("s3cret")
>>> p.pseudonym("c-1") == p.pseudonym("c-1") != p.pseudonym("c-2")
True
>>> len(p.pseudonym("c-1")), p.pseudonym("c-1") == Pseudonymiser("other").pseudonym("c-1")
(35, False)
>>> Pseudonymiser("").pseudonym("c-1")
'c-1'
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import orjson

#: Pseudonyms start with this, so a reader can tell them from ids at a glance.
PREFIX = "ps-"


class Pseudonymiser:
    """Keyed hash of customer ids (identity when ``key`` is empty)."""

    __slots__ = ("_key", "enabled")

    def __init__(self, key: str) -> None:
        self._key = key.encode()
        self.enabled = bool(key)

    def pseudonym(self, customer_id: str) -> str:
        """The customer's name inside the app."""
        if not self.enabled:
            return customer_id
        return self._hash(customer_id.encode())

    def key(self, raw: bytes) -> bytes:
        """The table key of the customer whose Kafka key (UTF-8 id) is ``raw`` (any bytes:
        a key that is not UTF-8 is hashed all the same)."""
        if not self.enabled:
            return raw
        return self._hash(raw).encode()

    def _hash(self, data: bytes) -> str:
        return PREFIX + hmac.new(self._key, data, hashlib.sha256).hexdigest()[:32]

    def redact(self, value: bytes | None) -> bytes | None:
        """A rejected message's value as the dead-letter queue may keep it: with
        pseudonymisation, ``customer_id`` fields of a JSON object (or of the objects of a
        JSON array) are replaced by pseudonyms, and a value that is not such JSON, which
        could hold an id anywhere, is withheld (None).

        >>> Pseudonymiser("k").redact(b'{"customer_id": "c-1", "ts": 1}') == orjson.dumps(
        ...     {"customer_id": Pseudonymiser("k").pseudonym("c-1"), "ts": 1})
        True
        >>> Pseudonymiser("k").redact(b"c-1 \\xff") is None
        True
        """
        if not self.enabled or value is None:
            return value
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        if isinstance(doc, dict):
            return orjson.dumps(self._redact_object(doc))
        if isinstance(doc, list) and all(isinstance(e, dict) for e in doc):
            return orjson.dumps([self._redact_object(e) for e in doc])
        return None

    def _redact_object(self, doc: dict[str, Any]) -> dict[str, Any]:
        customer = doc.get("customer_id")
        if isinstance(customer, str):
            return {**doc, "customer_id": self.pseudonym(customer)}
        return {k: v for k, v in doc.items() if k != "customer_id"}  # not a string: unknown

    def __repr__(self) -> str:
        return f"Pseudonymiser(enabled={self.enabled})"
