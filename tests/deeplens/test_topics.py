from confluent_kafka.admin import NewTopic

from deeplens.cli import main
from deeplens.kafka import admin_client
from deeplens.topics import TOPICS, TopicNames, describe_retention, ensure_topics


def test_ensure_creates_table_topics_then_changes_nothing(broker, prefix) -> None:
    from deeplens.settings import KafkaSettings

    settings = KafkaSettings(bootstrap_servers=broker, one_record_per_batch=True, topic_prefix=prefix)
    admin = admin_client(settings)
    names = TopicNames(prefix)
    first = ensure_topics(admin, names)
    assert sorted(first.created) == sorted(names.physical(t) for t in TOPICS)
    assert first.ok

    metadata = admin.list_topics(timeout=10).topics
    for spec in TOPICS.values():
        assert len(metadata[names.physical(spec.name)].partitions) == spec.partitions
    seed = {"images.uploaded": 3, "images.validated": 3, "images.processed": 3,
            "images.indexed": 3, "images.failed": 1, "tenant.usage": 6}
    for topic, partitions in seed.items():
        assert TOPICS[topic].partitions == partitions

    retention = describe_retention(admin, [names.physical(t) for t in TOPICS])
    day = 86_400_000
    assert retention[names.physical("images.uploaded")] == 7 * day
    assert retention[names.physical("images.failed")] == 30 * day
    assert retention[names.physical("tenant.usage")] == 90 * day

    second = ensure_topics(admin, names)
    assert second.created == [] and second.ok
    assert sorted(second.existing) == sorted(first.created)


def test_ensure_reports_partition_drift(broker, prefix) -> None:
    from deeplens.settings import KafkaSettings

    settings = KafkaSettings(bootstrap_servers=broker, one_record_per_batch=True, topic_prefix=prefix)
    admin = admin_client(settings)
    narrow = prefix + "images.uploaded"
    admin.create_topics([NewTopic(narrow, num_partitions=1, replication_factor=-1)])[narrow].result()
    report = ensure_topics(admin, TopicNames(prefix))
    assert not report.ok
    assert any(narrow in line and "1 partitions" in line for line in report.drift)


def test_topics_cli(broker, prefix, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DEEPLENS_KAFKA__BOOTSTRAP_SERVERS", broker)
    monkeypatch.setenv("DEEPLENS_KAFKA__TOPIC_PREFIX", prefix)
    assert main(["topics", "ensure"]) == 0
    assert "created  " + prefix + "images.uploaded" in capsys.readouterr().out
    assert main(["topics", "ensure"]) == 0
    assert "created" not in capsys.readouterr().out
    assert main(["topics", "list"]) == 0
    listing = capsys.readouterr().out
    assert prefix + "tenant.usage" in listing and "90d" in listing


def test_cli_without_broker_explains(monkeypatch) -> None:
    monkeypatch.delenv("DEEPLENS_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    try:
        main(["topics", "ensure"])
    except SystemExit as exc:
        assert "DEEPLENS_KAFKA__BOOTSTRAP_SERVERS" in str(exc)
    else:
        raise AssertionError("expected a SystemExit explaining the missing broker")


def test_more_partitions_where_asked_and_the_seed_counts_elsewhere(broker, prefix, monkeypatch,
                                                                    capsys) -> None:
    import pytest

    from deeplens.topics import wanted_partitions

    monkeypatch.setenv("DEEPLENS_KAFKA__BOOTSTRAP_SERVERS", broker)
    monkeypatch.setenv("DEEPLENS_KAFKA__TOPIC_PREFIX", prefix)
    monkeypatch.setenv("DEEPLENS_KAFKA__MIN_PARTITIONS", "4")
    monkeypatch.setenv("DEEPLENS_KAFKA__PARTITIONS", '{"images.validated": 12}')
    assert main(["topics", "ensure"]) == 0
    capsys.readouterr()
    from deeplens.settings import KafkaSettings

    admin = admin_client(KafkaSettings(bootstrap_servers=broker, topic_prefix=prefix))
    metadata = admin.list_topics(timeout=10).topics
    assert len(metadata[prefix + "images.validated"].partitions) == 12
    assert len(metadata[prefix + "images.uploaded"].partitions) == 4  # raised to the minimum
    assert len(metadata[prefix + "tenant.usage"].partitions) == 6  # the seed's, above it
    assert main(["topics", "list"]) == 0
    row = next(ln for ln in capsys.readouterr().out.splitlines()
               if ln.startswith(prefix + "images.validated "))
    assert row.split()[1:3] == ["12", "12"]
    monkeypatch.setenv("DEEPLENS_KAFKA__PARTITIONS", '{"images.validated": 16}')
    assert main(["topics", "ensure"]) == 3  # fewer than wanted: drift, reported
    assert "16 wanted" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown topics: images.typo"):
        wanted_partitions({"images.typo": 2})
    assert wanted_partitions() == {name: spec.partitions for name, spec in TOPICS.items()}
