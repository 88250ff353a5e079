"""Connecting a command-line tool's or a subscriber's Kafka client: one clear line when no
broker answers.

:func:`start_client` starts an aiokafka producer or consumer within a timeout or raises
:class:`BrokerUnreachable`; used by the subscriptions, ``stream-app forget`` and the tools
that produce (``generate``, ``replay``). aiokafka is imported when a client starts, so that
importing this module (and :mod:`stream_app`) costs no Kafka client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

#: How long a command-line tool waits for a broker to answer before it gives up.
CONNECT_TIMEOUT_S = 10.0
#: The longest a half-started client is given to stop again.
STOP_TIMEOUT_S = 4.0


class BrokerUnreachable(ConnectionError):
    """No broker of the bootstrap servers answered within the connect timeout."""


@contextlib.contextmanager
def quiet_kafka_logs() -> Iterator[None]:
    """Hold back the Kafka client's log records below CRITICAL for the block.

    Used while a command-line tool connects: when no broker answers, the tool says so in
    one line of its own (:func:`start_client`), and aiokafka's ``Unable connect to ...``
    would only be a second line saying less."""
    root = logging.getLogger("aiokafka")
    level = root.level
    root.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        root.setLevel(level)


async def start_client(client: Any, servers: list[str],
                       timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Start an aiokafka producer or consumer within ``timeout_s``, or stop it again and
    raise :class:`BrokerUnreachable` saying where and why (``cannot reach Kafka at
    HOST:PORT: connection refused or closed``, ``no answer within 10 s``).

    What every command-line tool that talks to Kafka uses, so that an unreachable broker
    is one clear line rather than a traceback and warnings about an unclosed client."""
    from aiokafka.errors import KafkaConnectionError, KafkaError

    with quiet_kafka_logs():
        try:
            await asyncio.wait_for(client.start(), timeout_s)
            return
        except asyncio.TimeoutError:
            reason = f"no answer within {timeout_s:g} s"
        except KafkaConnectionError:
            reason = "connection refused or closed"
        except (KafkaError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}".rstrip(": ")
        with contextlib.suppress(Exception):  # what a half-started client can do
            await asyncio.wait_for(client.stop(), STOP_TIMEOUT_S)
    raise BrokerUnreachable(f"cannot reach Kafka at {','.join(servers)}: {reason}")
