"""What one record per batch costs on the local broker.

    python -m benchmarks.broker_batch_bench [--events 5000] [--senders 8]

The local tansu broker answers ListOffsets with the last batch's base offset + 1,
so DeepLens' producers send one record per batch to it (``one_record_per_batch``)
to keep watermarks, lag and topic sizes true. This measures that setting against
ordinary batching, side by side in one run: events/s acknowledged, through
DeepLens' own EventProducer, ``senders`` threads each sending 10 events a call
(what a consumer batch of a stage produces), and the watermark each leaves.
"""

from __future__ import annotations

import threading
import time
import uuid

from benchmarks.common import record
from deeplens.broker import local_broker
from deeplens.events import ImageDeleted
from deeplens.kafka import EventProducer, Outbound, admin_client
from deeplens.settings import KafkaSettings


def run(kafka: KafkaSettings, events: int, senders: int) -> tuple[float, int]:
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import NewTopic

    topic = f"bench-{uuid.uuid4().hex[:6]}"
    admin = admin_client(kafka)
    for future in admin.create_topics([NewTopic(topic, 1, 1)]).values():
        future.result(15)
    producer = EventProducer(kafka)
    per_sender = events // senders // 10 * 10  # whole calls of 10

    def send() -> None:
        for start in range(0, per_sender, 10):
            batch = [ImageDeleted(tenant_id="bench", image_id=f"{start + i}") for i in range(10)]
            producer.send([Outbound(topic, e.image_id, e) for e in batch])

    threads = [threading.Thread(target=send) for _ in range(senders)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    rate = per_sender * senders / (time.perf_counter() - began)
    producer.close()
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": "bench"})
    high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    consumer.close()
    return rate, high


def main() -> None:
    from benchmarks.common import BenchParser

    parser = BenchParser(__doc__, repeat=False)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--senders", type=int, default=8)
    args = parser.parse_args()
    figures: dict[str, dict[str, float]] = {}
    with local_broker() as broker:
        for label, one in (("batched", False), ("one record per batch", True),
                           ("batched (again)", False), ("one record per batch (again)", True)):
            kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, one_record_per_batch=one)
            rate, high = run(kafka, args.events, args.senders)
            figures[label] = {"events_per_s": round(rate, 1), "watermark": high}
            print(f"{label:30} {rate:8.0f} events/s acknowledged; watermark {high} "
                  f"for {args.events // args.senders // 10 * 10 * args.senders} events")
    path = record("broker_batch", {"events": args.events, "senders": args.senders,
                                   "runs": figures})
    print(f"recorded in {path}")


if __name__ == "__main__":
    main()
