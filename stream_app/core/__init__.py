"""Pure domain: may import stream_app.model (and config, for now); no faust, aiokafka, asyncio."""
