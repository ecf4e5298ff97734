"""Stack settings: defaults, overrides and the errors a bad stack file gets."""

from __future__ import annotations

import pytest

from infra.settings import SettingsError, StackSettings

REQUIRED = {
    "domainName": "chat.example.com",
    "hostedZoneName": "example.com",
    "imageTag": "1234567",
}


def test_sections_override_only_the_keys_they_name() -> None:
    """A section keeps its defaults for keys it does not name; a numeric tag stays a string."""
    settings = StackSettings.from_strings(
        "dev", {**REQUIRED, "gateway": '{"desired": 3, "maxTasks": 10}', "logRetentionDays": "7"}
    )
    assert (settings.gateway.desired, settings.gateway.max_tasks) == (3, 10)
    assert settings.gateway.scale_target == 70.0
    assert settings.log_retention_days == 7
    assert settings.image_tag == "1234567"
    assert settings.namespace == "ChatPlatform/dev"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"logRetention": "7"}, "unknown config keys: logRetention"),
        ({"redis": '{"shard": 2}'}, "unknown keys in chat-platform:redis: shard"),
        ({"redis": '{"backend": "dynamo"}'}, "redis.backend must be one of"),
        ({"stopTimeoutS": "15"}, "stopTimeoutS must be above shutdownTimeoutS"),
        ({"stopTimeoutS": "121"}, "at most 120"),
        ({"worker": '{"environment": {"REDIS_URL": "x"}}'}, "must not set secrets"),
        ({"priority": '{"environment": {"BATCHSIZE": "5"}}'}, "not a service setting"),
        ({"gateway": '{"desired": 5, "maxTasks": 4}'}, "minTasks <= desired <= maxTasks"),
        ({"priority": '{"cpu": 300}'}, "priority.cpu must be one of"),
        ({"mysql": '{"multiAz": "maybe"}'}, "must be true or false"),
    ],
)
def test_bad_settings_fail_naming_the_key(raw: dict[str, str], message: str) -> None:
    """Each mistake raises SettingsError whose message names the offending key."""
    with pytest.raises(SettingsError, match=message):
        StackSettings.from_strings("dev", {**REQUIRED, **raw})


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_required_keys_are_required(missing: str) -> None:
    """Domain, zone and image tag have no default: deploying without them fails."""
    raw = {k: v for k, v in REQUIRED.items() if k != missing}
    with pytest.raises(SettingsError, match=missing):
        StackSettings.from_strings("dev", raw)
