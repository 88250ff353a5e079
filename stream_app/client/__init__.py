"""For services downstream: may import aiokafka, core, model (and config, for now); never faust."""
