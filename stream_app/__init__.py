"""stream-app: live behavioural micro-segmentation of customers on Kafka.

For the services downstream, the subscription API (:mod:`stream_app.client.subscribe`):
``subscribe``, ``subscribe_audiences`` and ``subscribe_catalogue`` iterate over
:class:`SegmentChangeEvent`, :class:`AudienceChangeEvent` and :class:`CatalogueChangeEvent`.
Importing them costs no Kafka client: aiokafka is loaded when a subscription starts.
"""

from stream_app.client.subscribe import (
    AudienceChangeEvent,
    BrokerUnreachable,
    CatalogueChangeEvent,
    ChangeReason,
    SegmentChangeEvent,
    Subscription,
    subscribe,
    subscribe_audiences,
    subscribe_catalogue,
)

__version__ = "0.1.0"

__all__ = ["AudienceChangeEvent", "BrokerUnreachable", "CatalogueChangeEvent", "ChangeReason",
           "SegmentChangeEvent", "Subscription", "__version__", "subscribe",
           "subscribe_audiences", "subscribe_catalogue"]
