"""stream-app: live behavioural micro-segmentation of customers on Kafka."""

__version__ = "0.1.0"
