"""A consumer-loop process that dies (os._exit) after producing, before committing.

Run as ``python -m tests.deeplens.crashing_worker BOOTSTRAP PREFIX``.
"""

import os
import sys

from deeplens.consumer_loop import ConsumerLoop
from deeplens.settings import KafkaSettings
from tests.deeplens.test_consumer_loop import to_validated


def die(_envelopes) -> None:
    os._exit(17)


if __name__ == "__main__":
    bootstrap, prefix = sys.argv[1:3]
    settings = KafkaSettings(bootstrap_servers=bootstrap, one_record_per_batch=True, topic_prefix=prefix,
                             poll_timeout_s=0.2, session_timeout_ms=6000, batch_size=5)
    ConsumerLoop(settings=settings, stage="validation", topics=["images.uploaded"],
                 handler=to_validated, before_commit=die).run()
