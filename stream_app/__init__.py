"""stream-app: live behavioural micro-segmentation of customers on Kafka.

For the services downstream, the subscription API (:mod:`stream_app.client.subscribe`):
``subscribe`` and ``subscribe_audiences`` iterate over :class:`SegmentChangeEvent` and
:class:`AudienceChangeEvent`. Importing them costs no Kafka client: aiokafka is loaded
when a subscription starts.
"""

from stream_app.client.subscribe import (
    AudienceChangeEvent,
    BrokerUnreachable,
    ChangeReason,
    SegmentChangeEvent,
    Subscription,
    subscribe,
    subscribe_audiences,
)

__version__ = "0.1.0"

__all__ = ["AudienceChangeEvent", "BrokerUnreachable", "ChangeReason", "SegmentChangeEvent",
           "Subscription", "__version__", "subscribe", "subscribe_audiences"]
