"""The Kafka group of the settings (``DEEPLENS_KAFKA__*``): the broker, the client
settings of the seed, and the local broker's own knobs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, SecretStr


class KafkaSettings(BaseModel):
    """Where the broker is and how DeepLens talks to it."""

    bootstrap_servers: str = Field(
        "", description="Kafka bootstrap servers; empty starts the local tansu broker"
    )
    topic_prefix: str = Field("", description="Prepended to every topic and group name")
    client_id: str = "deeplens"
    # Seed: Retries = 3. librdkafka retries within delivery_timeout_ms regardless;
    # this caps the count.
    producer_retries: int = Field(3, ge=0)
    linger_ms: int = Field(5, ge=0)
    compression_type: Literal["lz4", "zstd", "gzip", "snappy", "none"] = "lz4"
    delivery_timeout_ms: int = Field(30_000, ge=1_000)
    batch_size: int = Field(64, ge=1, le=10_000, description="Messages per consumer batch")
    min_partitions: int = Field(
        0, ge=0, le=10_000, description="Every topic gets at least this many partitions when "
        "created (the table's seed counts otherwise): a stage runs at most one consumer per "
        "partition")
    partitions: dict[str, int] = Field(
        default_factory=dict, description='Partitions per topic where more are wanted, e.g. '
        '{"images.validated": 12}; applied when topics are created (ensure reports drift)')
    poll_timeout_s: float = Field(0.5, gt=0)
    session_timeout_ms: int = Field(10_000, ge=1_000)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    retry_inplace_attempts: int = Field(
        4, ge=1, description="In-place retries of a failing batch before its events go to the "
        "stage's retry topics")
    retry_delay_scale: float = Field(
        1.0, gt=0, description="Multiplies the retry ladder's delays (tests shorten them)")
    local_broker_port: int = Field(0, ge=0, le=65535, description="0 picks a free port")
    local_broker_recycle_messages: int = Field(
        10_000, ge=0, description="The local (in-memory) broker only: a topic holding this "
        "many records, all consumed, is recreated at a quiet moment to give its memory "
        "back; 0 never does")
    local_broker_recycle_interval_s: float = Field(
        30, gt=0, description="How often the local broker's topics are checked for that")
    one_record_per_batch: bool = Field(
        False, description="Producers send every record in a batch of its own. Set for the "
        "local tansu broker (deeplens up does), whose ListOffsets answers a batch's base "
        "offset + 1, so watermarks, lag and topic sizes would undercount batched records; "
        "never needed on Kafka")
