"""Pure domain: may import stream_app.model, never config; no faust, aiokafka, asyncio."""
