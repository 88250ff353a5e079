"""Topic preparation before a worker starts: partition counts, creation, clear refusals.

Customer state is co-partitioned with its inputs: the customer table's partition ``p``
holds the customers whose events arrive on partition ``p`` of every input topic. So all
input topics (and the erasure topic and the internal control topic) must have the same
partition count.

* Input topics that already exist (created by a platform team) decide the count; the
  worker adapts to it even when it differs from ``TOPIC_PARTITIONS``.
* Inputs that disagree with each other, or internal topics left over from a run with
  another count, make the worker refuse to start with a message naming what to change.
* Missing topics are created with the resolved count.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from stream_app.config import Settings

# The logger keeps its name from before the package split (log filters and docs use it).
log = logging.getLogger("stream_app.topics")


class TopicLayoutError(RuntimeError):
    """The existing topics cannot be used as they are; the message says what to change."""


@dataclass(frozen=True)
class TopicPlan:
    partitions: int
    existing: dict[str, int]
    to_create: list[NewTopic]


def changelog_topics(settings: Settings) -> list[str]:
    """Names of the changelog topics Faust derives for the app's tables."""
    return [f"{settings.app_id}-customers-changelog"]


def plan_topics(settings: Settings, existing: dict[str, int]) -> TopicPlan:
    """Decide the partition count and which topics to create (pure; see module doc).

    >>> s = Settings()
    >>> plan_topics(s, {}).partitions
    4
    >>> plan_topics(s, {"clickstream": 6, "purchases": 6}).partitions
    6
    >>> plan_topics(s, {"clickstream": 6, "purchases": 3})
    Traceback (most recent call last):
    ...
    stream_app.worker.topics.TopicLayoutError: input topics are not co-partitioned: clickstream ...
    """
    inputs = {t: existing[t] for t in settings.input_topics if t in existing}
    counts = sorted(set(inputs.values()))
    if len(counts) > 1:
        listing = ", ".join(f"{t} has {n}" for t, n in inputs.items())
        raise TopicLayoutError(
            f"input topics are not co-partitioned: {listing} (partitions). Customer state "
            "is partitioned like its inputs, so give every input topic the same partition count "
            "(repartition the odd ones out), then start the worker again."
        )
    partitions = counts[0] if counts else settings.topic_partitions
    if counts and partitions != settings.topic_partitions:
        log.warning("input topics have %d partitions; using %d instead of TOPIC_PARTITIONS=%d",
                    partitions, partitions, settings.topic_partitions)
    erasure = settings.erasure_topic
    if erasure in existing and existing[erasure] != partitions:
        raise TopicLayoutError(
            f"the erasure topic {erasure} has {existing[erasure]} partitions but the inputs "
            f"have {partitions}: an erasure must reach the partition of the customer's events. "
            "Give it the inputs' partition count (or name another ERASURE_TOPIC)."
        )
    for internal in [settings.control_topic, *changelog_topics(settings)]:
        if internal in existing and existing[internal] != partitions:
            raise TopicLayoutError(
                f"internal topic {internal} has {existing[internal]} partitions but the inputs "
                f"need {partitions}: it is left from a run with another partition count. Use a "
                f"new STREAM_APP_ID (or delete the app's internal topics) and start again."
            )
    replication = settings.topic_replication
    wanted = {
        settings.clickstream_topic: (partitions, {}),
        settings.purchases_topic: (partitions, {}),
        settings.profiles_topic: (partitions, {}),
        erasure: (partitions, {}),
        settings.control_topic: (partitions, {"retention.ms": str(24 * 3600 * 1000)}),
        settings.segment_changes_topic: (partitions, {}),
        settings.audience_changes_topic: (partitions, {}),
        settings.dlq_topic: (partitions, {}),
        settings.samples_topic: (1, {"retention.ms": str(24 * 3600 * 1000)}),
        settings.segment_model_topic: (1, {"cleanup.policy": "compact"}),
        # A segment's history (GET /segments) is read from the whole topic: kept forever.
        settings.segment_catalogue_topic: (1, {"retention.ms": "-1"}),
    }
    to_create = [
        NewTopic(name, n, replication, topic_configs=configs)
        for name, (n, configs) in wanted.items() if name not in existing
    ]
    return TopicPlan(partitions, dict(existing), to_create)


async def existing_topics(settings: Settings, timeout: float = 30.0) -> dict[str, int]:
    """Partition count of every topic in the cluster."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers,
                                request_timeout_ms=int(timeout * 1000))
    await asyncio.wait_for(admin.start(), timeout)
    try:
        names = await admin.list_topics()
        if not names:
            return {}
        described = await admin.describe_topics(list(names))
        return {d["topic"]: len(d["partitions"]) for d in described if not d.get("error_code")}
    finally:
        await admin.close()


async def prepare_topics(settings: Settings, timeout: float = 30.0) -> TopicPlan:
    """Check the cluster's topics, create the missing ones; return the plan applied."""
    try:
        existing = await existing_topics(settings, timeout)
    except (KafkaError, asyncio.TimeoutError, OSError) as exc:
        raise TopicLayoutError(
            f"cannot reach Kafka at {settings.kafka_bootstrap_servers} within {timeout:.0f} s "
            f"({type(exc).__name__}: {str(exc) or 'no answer'}). Check KAFKA_BOOTSTRAP_SERVERS."
        ) from exc
    plan = plan_topics(settings, existing)
    if plan.to_create:
        admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
        await admin.start()
        try:
            response = await admin.create_topics(plan.to_create)
            for name, code, *message in response.topic_errors:
                if code == 0:
                    log.info("created topic %s", name)
                elif code != TopicAlreadyExistsError.errno:  # another worker was first
                    raise TopicLayoutError(
                        f"cannot create topic {name}: {for_code(code).__name__} "
                        f"{message[0] if message else ''}".rstrip())
        finally:
            await admin.close()
    return plan
