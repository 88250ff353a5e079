"""Segmentation numerics: of stream_app only config (for now); no faust, aiokafka or asyncio."""
