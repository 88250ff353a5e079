"""The live segment map (map.html and its pure parts): may import core and model; no Kafka."""
