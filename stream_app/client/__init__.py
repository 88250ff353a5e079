"""For services downstream: may import aiokafka, core, model; never config or faust."""
