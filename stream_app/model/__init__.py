"""Segmentation numerics: no other part of stream_app; no faust, aiokafka or asyncio."""
