import json

import pytest

from deeplens.api_keys import parse_api_keys
from deeplens.cli import main
from deeplens.settings import SettingsError, load_settings


def test_nested_env_and_api_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEEPLENS_KAFKA__BOOTSTRAP_SERVERS", "kafka-1:9092,kafka-2:9092")
    monkeypatch.setenv("DEEPLENS_SERVE__MAX_BATCH_SIZE", "48")
    monkeypatch.setenv("DEEPLENS_API_KEYS", "alpha:key-a-0123456789ab, beta:key-b-0123456789ab")
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.serve.max_batch_size == 48
    assert settings.tenant_keys() == {"key-a-0123456789ab": "alpha", "key-b-0123456789ab": "beta"}


def test_keys_file_adds_tenants(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# tenants\ngamma:key-g-0123456789ab\n\ndelta:key-d-0123456789ab\n")
    monkeypatch.setenv("DEEPLENS_API_KEYS_FILE", str(keys))
    assert load_settings().tenant_keys() == {"key-g-0123456789ab": "gamma", "key-d-0123456789ab": "delta"}


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("DEEPLENS_SERVE__PORT", "eighty"),
        ("DEEPLENS_KAFKA__COMPRESSION_TYPE", "brotli"),
        ("DEEPLENS_API_KEYS", "alpha-without-key"),
        ("DEEPLENS_INGESTION__MAX_UPLOAD_BYTES", "0"),
    ],
)
def test_bad_value_names_the_variable(monkeypatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert var in str(info.value)


def test_tenant_ids_are_restricted() -> None:
    with pytest.raises(ValueError, match="letters"):
        parse_api_keys("../etc:key")
    with pytest.raises(ValueError, match="two tenants"):
        parse_api_keys("a:same-key-0123456789,b:same-key-0123456789")


def test_config_command_masks_secrets(monkeypatch, capsys) -> None:
    monkeypatch.setenv("DEEPLENS_API_KEYS", "alpha:super-secret-key")
    monkeypatch.setenv("DEEPLENS_KAFKA__SASL_PASSWORD", "hunter2")
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "super-secret-key" not in out and "hunter2" not in out
    shown = json.loads(out)
    assert shown["api_keys"] == "***"
    assert shown["kafka"]["sasl_password"] == "***"
    assert shown["ingestion"]["max_upload_bytes"] == 25 * 1024 * 1024


def test_config_command_reports_bad_settings(monkeypatch, capsys) -> None:
    monkeypatch.setenv("DEEPLENS_SERVE__PORT", "-1")
    assert main(["config"]) == 2
    assert "DEEPLENS_SERVE__PORT" in capsys.readouterr().err


def test_dedup_defaults_from_the_environment_reach_every_tenant_and_overrides_stack_on_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's ``DEEPLENS_DEDUP__NEAR_WINDOW_MAX_DISTANCE=-1`` turns the windows off
    for every tenant; a tenant's JSON overrides only the fields it names."""
    monkeypatch.setenv("DEEPLENS_DEDUP__NEAR_WINDOW_MAX_DISTANCE", "-1")
    monkeypatch.setenv("DEEPLENS_DEDUP__MAX_MATCHES", "5")
    monkeypatch.setenv("DEEPLENS_DEDUP__TENANTS", '{"acme": {"near_max_distance": 6}}')
    dedup = load_settings().dedup
    anyone = dedup.for_tenant("globex")
    assert (anyone.near_window_max_distance, anyone.max_matches, anyone.near_max_distance) \
        == (-1, 5, 10)
    acme = dedup.for_tenant("acme")
    assert (acme.near_window_max_distance, acme.max_matches, acme.near_max_distance) \
        == (-1, 5, 6)
