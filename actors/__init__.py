"""Kafka consumer actors, one module per stage."""
