"""Query embeddings have their own place in the Embedder: a search's image is embedded
while upload batches hold every upload slot."""

from __future__ import annotations

import asyncio
import threading

import pytest

from serve_apps.embedder import Embedder, EmbedderArgs
from tests import images
from tests.serve_apps.test_device_faults import TINY


@pytest.fixture
def fresh_batch_queues():
    """Serve builds a ``@serve.batch`` method's queue lazily, on first call, and keeps it
    in the method's closure, shared by the class. Run here, in the test process, that
    queue would make the deployment class unpicklable for every later ``serve.run`` in
    this process (the web tests' stack); so it is dropped again afterwards."""
    from ray.serve.batching import _LazyBatchQueueWrapper

    yield
    seen: set[int] = set()
    functions = list(vars(Embedder.func_or_class).values())
    while functions:  # the wrapper sits in the closure of a closure of the method
        function = functions.pop()
        if id(function) in seen:
            continue
        seen.add(id(function))
        for cell in getattr(function, "__closure__", None) or ():
            value = cell.cell_contents
            if isinstance(value, _LazyBatchQueueWrapper):
                value._queue = None
            elif callable(value):
                functions.append(value)


def test_a_query_is_not_queued_behind_upload_batches(monkeypatch, fresh_batch_queues) -> None:
    from ray.serve import batching

    # Outside a replica, Serve's batch queue cannot read the deployment's settings for a
    # warning it prints; nothing else of it needs a replica.
    monkeypatch.setattr(batching._BatchQueue,
                        "_warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda self: None)
    replica = Embedder.func_or_class(EmbedderArgs(model=TINY, decoder="pillow", device="cpu"))
    release = threading.Event()
    run = replica._run_batch

    def uploads_stuck(requests):
        if any(want for _, want in requests):  # an upload batch: held until released
            release.wait(300)
        return run(requests)

    replica._run_batch = uploads_stuck

    async def scenario():
        uploads = asyncio.ensure_future(replica.embed_images(
            [images.jpeg(i) for i in range(96)]))  # more than both upload batch slots hold
        await asyncio.sleep(0.5)
        try:  # behind the uploads, the query would wait for their release: a timeout
            query = await asyncio.wait_for(replica.embed(images.jpeg(500)), 60)
            pending = not uploads.done()
        finally:
            release.set()
        return query, pending, await uploads

    query, uploads_were_pending, done = asyncio.run(scenario())
    assert query.ok and uploads_were_pending
    assert len(done) == 96 and all(r.ok for r in done)
