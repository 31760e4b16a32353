"""Kafka side of mmbee: the Faust app, agents, codec, topics and the embedded broker."""
