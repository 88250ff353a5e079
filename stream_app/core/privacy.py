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

import contextlib
import hashlib
import hmac
import re
from typing import Any

import orjson

#: Pseudonyms start with this, so a reader can tell them from ids at a glance.
PREFIX = "ps-"
#: Fields of an input message whose values identify a customer, or one of its events,
#: sessions, orders or requests (an event id may embed the customer id): a dead letter
#: keeps them only pseudonymised (:meth:`Pseudonymiser.dead_letter_parts`).
ID_FIELDS = frozenset({"customer_id", "event_id", "session_id", "order_id", "request_id"})


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

    def redact(self, value: bytes | None, key: bytes | None = None) -> bytes | None:
        """A rejected message's value as the dead-letter queue may keep it (see
        :meth:`dead_letter_parts`, which also says how it was redacted)."""
        return self.dead_letter_parts(key, value, "")[1]

    def dead_letter_parts(self, key: bytes | None, value: bytes | None, detail: str
                          ) -> tuple[bytes | None, bytes | None, str, str | None]:
        """``(key, value, detail, redaction)`` of a dead letter for a rejected message with
        Kafka ``key`` and ``value``, rejected because of ``detail``.

        Without a key everything is kept as received (``redaction`` None). With a key, the
        dead letter holds no raw customer id (docs/privacy.md, *Dead letters*):

        * the Kafka key is replaced by its pseudonym (as a table key);
        * a value that is JSON is kept with every id pseudonymised (``"pseudonymised"``):
          the values of the id fields (:data:`ID_FIELDS`, at any depth; a number or a
          nested structure there too), and in every other string, object key and the
          ``detail``, each occurrence of the raw customer id (the Kafka key, and every
          ``customer_id`` in the value) and of every id-field value is replaced by its
          pseudonym; an event id such as ``c11-0000042-e17`` that embeds the customer id
          becomes the event id's own pseudonym;
        * a value that is not JSON could hold an id anywhere, in any encoding: it is
          withheld (None, ``"withheld"``); the record's ``topic``/``partition``/``offset``
          still point at the original in the input topic, for as long as that keeps it.

        >>> p = Pseudonymiser("k")
        >>> _, value, detail, how = p.dead_letter_parts(
        ...     b"c-1", b'{"customer_id": "c-1", "event_id": "c-1-e7", "note": "by c-1"}',
        ...     "ts 'c-1' is not ISO-8601")
        >>> doc = orjson.loads(value)
        >>> doc["customer_id"] == p.pseudonym("c-1"), doc["event_id"] == p.pseudonym("c-1-e7")
        (True, True)
        >>> doc["note"] == "by " + p.pseudonym("c-1"), "c-1" in detail, how
        (True, False, 'pseudonymised')
        >>> p.dead_letter_parts(b"c-1", b"c-1 \\xff", "")[1:]
        (None, '', 'withheld')
        >>> Pseudonymiser("").dead_letter_parts(b"c-1", b"c-1", "d")
        (b'c-1', b'c-1', 'd', None)
        """
        if not self.enabled:
            return key, value, detail, None
        alias = None if key is None else self.key(key)
        ids: dict[str, str] = {}
        if key:
            with contextlib.suppress(UnicodeDecodeError):
                raw_key = key.decode()
                ids[raw_key] = self.pseudonym(raw_key)
        if value is None:
            return alias, None, self._scrub(detail, ids), None
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError:
            return alias, None, self._scrub(detail, ids), "withheld"
        self._collect_ids(doc, ids, False)
        pattern = self._pattern(ids)
        redacted = orjson.dumps(self._redact_doc(doc, ids, pattern))
        return alias, redacted, self._scrub(detail, ids, pattern), "pseudonymised"

    def _collect_ids(self, doc: Any, ids: dict[str, str], in_id: bool) -> None:
        """Add the raw ids ``doc`` names (the string values of :data:`ID_FIELDS`, at any
        depth) to ``ids``, each with its pseudonym."""
        if isinstance(doc, dict):
            for name, item in doc.items():
                self._collect_ids(item, ids, in_id or name in ID_FIELDS)
        elif isinstance(doc, list):
            for item in doc:
                self._collect_ids(item, ids, in_id)
        elif in_id and isinstance(doc, str) and doc:
            ids[doc] = self.pseudonym(doc)

    def _redact_doc(self, doc: Any, ids: dict[str, str], pattern: re.Pattern[str] | None
                    ) -> Any:
        """``doc`` with every id-field value pseudonymised and every raw id in other
        strings and in object keys replaced by its pseudonym."""
        if isinstance(doc, dict):
            return {self._scrub(name, ids, pattern):
                    self._pseudonymise_all(item) if name in ID_FIELDS
                    else self._redact_doc(item, ids, pattern)
                    for name, item in doc.items()}
        if isinstance(doc, list):
            return [self._redact_doc(item, ids, pattern) for item in doc]
        if isinstance(doc, str):
            return self._scrub(doc, ids, pattern)
        return doc

    def _pseudonymise_all(self, doc: Any) -> Any:
        """The value of an id field: every string and number in it pseudonymised."""
        if isinstance(doc, dict):
            return {self.pseudonym(name): self._pseudonymise_all(item)
                    for name, item in doc.items()}
        if isinstance(doc, list):
            return [self._pseudonymise_all(item) for item in doc]
        if isinstance(doc, str):
            return self.pseudonym(doc) if doc else doc
        if isinstance(doc, (int, float)) and not isinstance(doc, bool):
            return self.pseudonym(orjson.dumps(doc).decode())
        return doc  # null, true, false

    @staticmethod
    def _pattern(ids: dict[str, str]) -> re.Pattern[str] | None:
        """One regular expression for all of ``ids``, longest first (an id that contains
        another is replaced whole)."""
        if not ids:
            return None
        return re.compile("|".join(re.escape(raw)
                                   for raw in sorted(ids, key=len, reverse=True)))

    def _scrub(self, text: str, ids: dict[str, str],
               pattern: re.Pattern[str] | None = None) -> str:
        """``text`` with each raw id of ``ids`` replaced by its pseudonym."""
        if pattern is None:
            pattern = self._pattern(ids)
            if pattern is None:
                return text
        return pattern.sub(lambda m: ids[m.group(0)], text)

    def __repr__(self) -> str:
        return f"Pseudonymiser(enabled={self.enabled})"
