"""The command-line tools (stream-app and its commands): may import every part of stream_app."""
