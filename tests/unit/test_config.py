"""Settings: read once from the environment, typed, failing loudly on bad values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chat.config import REDACTED, Settings, load_settings, reference_markdown
from chat.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_local_contract() -> None:
    """With an empty environment the gateway listens on 127.0.0.1:8080 (DESIGN.md)."""
    s = load_settings({})
    assert (s.gateway_host, s.gateway_port) == ("127.0.0.1", 8080)
    assert s.stream_partitions >= 1


def test_environment_values_are_parsed_to_their_types() -> None:
    """Variables are upper-case field names and are converted to the field's type."""
    s = load_settings({"STREAM_PARTITIONS": "64", "REDIS_CLUSTER": "true", "GATEWAY_PORT": "9000"})
    assert (s.stream_partitions, s.redis_cluster, s.gateway_port) == (64, True, 9000)


@pytest.mark.parametrize(
    ("name", "value"),
    [("STREAM_PARTITIONS", "zero"), ("GATEWAY_PORT", "70000"), ("LOG_LEVEL", "LOUD")],
)
def test_bad_value_fails_naming_the_variable(name: str, value: str) -> None:
    """A bad value raises ConfigError whose message names the environment variable."""
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after startup; with_overrides makes a validated copy."""
    s = load_settings({})
    with pytest.raises(ValueError, match="frozen"):
        s.gateway_port = 1  # type: ignore[misc]
    assert s.with_overrides(gateway_port=1).gateway_port == 1
    with pytest.raises(ValueError, match="gateway_port"):
        s.with_overrides(gateway_port=-5)


def test_secrets_never_print() -> None:
    """URLs with credentials and the JWT secret are hidden in repr and in the CLI dump."""
    env = {"REDIS_URL": "redis://:hunter2@h:6379/0", "JWT_SECRET": "topsecretvalue"}
    s = load_settings(env)
    assert "hunter2" not in repr(s)
    assert "topsecretvalue" not in repr(s)
    out = subprocess.run(
        [sys.executable, "-m", "chat.config"],
        env={**env, "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "hunter2" not in out
    assert f"JWT_SECRET={REDACTED}" in out


def test_configuration_reference_is_generated_and_current() -> None:
    """docs/configuration.md is exactly what `python -m chat.config --markdown` prints."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert doc == reference_markdown(), "run: make docs"
    for name in Settings.model_fields:
        assert f"`{name.upper()}`" in doc


def test_mysql_ssl_ca_becomes_a_verifying_tls_context() -> None:
    """?ssl_ca= in SQL_URL is lifted into a certificate-verifying SSLContext for the driver."""
    import ssl

    import sqlalchemy as sa

    from chat.storage.sql import tls_connect_args

    ca = "/etc/ssl/certs/ca-certificates.crt"
    url, args = tls_connect_args(sa.make_url(f"mysql+aiomysql://u:p@db:3306/chat?ssl_ca={ca}"))
    assert "ssl_ca" not in url.query
    assert isinstance(args["ssl"], ssl.SSLContext)
    assert args["ssl"].verify_mode == ssl.CERT_REQUIRED
    assert tls_connect_args(sa.make_url("sqlite+aiosqlite:///x.db"))[1] == {}
