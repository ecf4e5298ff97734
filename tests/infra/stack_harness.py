"""Run the Pulumi program under ``pulumi.runtime.set_mocks`` for one stack file.

Each ``Pulumi.<stack>.yaml`` in the repository is fed through the mocks as that stack's
config (plus the ``imageTag`` `make deploy` would set); the mock monitor records every
resource's URN and inputs, and the tests assert policies over them. Computed outputs
(ARNs, endpoints, generated passwords) get recognisable fake values, so a test can
look for a password anywhere it must not be.
"""

from __future__ import annotations

import json
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml  # type: ignore[import-untyped]
from pulumi.runtime import settings as pulumi_settings
from pulumi.runtime.mocks import MockCallArgs, MockMonitor, MockResourceArgs

from infra import program
from infra.settings import PROJECT, StackSettings

ROOT = Path(__file__).resolve().parents[2]
STACK_FILES = sorted(ROOT.glob("Pulumi.*.yaml"))
ACCOUNT = "123456789012"
REGION = "us-east-1"
#: Every generated password starts with this, so leaks are easy to find.
PASSWORD_MARK = "MockPassw0rd"


def stack_name(path: Path) -> str:
    """``Pulumi.loadtest-elastic.yaml`` -> ``loadtest-elastic``."""
    return path.name[len("Pulumi.") : -len(".yaml")]


def stack_config(path: Path) -> dict[str, str]:
    """The stack file's config as Pulumi hands it to a program: strings, objects as JSON."""
    config = yaml.safe_load(path.read_text())["config"]
    flat = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    flat.setdefault(f"{PROJECT}:imageTag", "abc1234")
    return flat


@dataclass(frozen=True)
class Resource:
    """One registered resource: its URN, type token, logical name and state."""

    urn: str
    type: str
    name: str
    state: dict[str, Any]


@dataclass
class Deployment:
    """What one run of the program registered."""

    stack: str
    settings: StackSettings
    resources: list[Resource] = field(default_factory=list)

    def of_type(self, token: str) -> list[Resource]:
        """Resources of one type token, e.g. ``aws:ecs/service:Service``."""
        return [r for r in self.resources if r.type == token]

    def one(self, token: str, name_part: str) -> Resource:
        """The single resource of a type whose logical name contains ``name_part``."""
        found = [r for r in self.of_type(token) if name_part in r.name]
        assert len(found) == 1, f"expected one {token} named *{name_part}*, got {found}"
        return found[0]


#: How the Pulumi SDK marks a secret value in serialized state.
_SECRET_SIG = "4dabf18193072939515e22adb298388d"


def unwrap(value: Any) -> Any:
    """``value`` with Pulumi's secret envelopes replaced by what they hold."""
    if isinstance(value, dict):
        if value.get(_SECRET_SIG) == "1b47061264138c4ac30d75fd1eb44270":
            return unwrap(value["value"])
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def _arn(service: str, name: str) -> str:
    return f"arn:aws:{service}:{REGION}:{ACCOUNT}:{name}"


def _computed(typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
    """Fake values for the outputs the program reads from a resource."""
    service = typ.split(":")[1].split("/")[0]
    out: dict[str, Any] = {"arn": _arn(service, name)}
    out.setdefault("name", inputs.get("name", name))
    by_type: dict[str, dict[str, Any]] = {
        "random:index/randomPassword:RandomPassword": {"result": f"{PASSWORD_MARK}{name}"},
        "aws:lb/loadBalancer:LoadBalancer": {
            "arnSuffix": f"app/{name}/0123456789",
            "dnsName": f"{name}.{REGION}.elb.amazonaws.com",
            "zoneId": "Z35SXDOTRQ7X7K",
        },
        "aws:lb/targetGroup:TargetGroup": {"arnSuffix": f"targetgroup/{name}/0123456789"},
        "aws:acm/certificate:Certificate": {
            "domainValidationOptions": [
                {
                    "domainName": inputs.get("domainName"),
                    "resourceRecordName": f"_x.{inputs.get('domainName')}.",
                    "resourceRecordType": "CNAME",
                    "resourceRecordValue": "_y.acm-validations.aws.",
                }
            ]
        },
        "aws:acm/certificateValidation:CertificateValidation": {
            "certificateArn": inputs.get("certificateArn")
        },
        "aws:route53/record:Record": {"fqdn": inputs.get("name")},
        "aws:elasticache/replicationGroup:ReplicationGroup": {
            "configurationEndpointAddress": f"clustercfg.{name}.cache.amazonaws.com"
        },
        "aws:memorydb/cluster:Cluster": {
            "clusterEndpoints": [
                {"address": f"clustercfg.{name}.memorydb.amazonaws.com", "port": 6379}
            ]
        },
        "aws:docdb/cluster:Cluster": {
            "endpoint": f"{name}.cluster.docdb.amazonaws.com",
            "clusterIdentifier": name,
        },
        "aws:docdb/elasticCluster:ElasticCluster": {
            "endpoint": f"{name}.docdb-elastic.amazonaws.com"
        },
        "aws:rds/instance:Instance": {
            "address": f"{name}.rds.amazonaws.com",
            "identifier": name,
        },
        "aws:s3/bucket:Bucket": {"bucket": name, "arn": f"arn:aws:s3:::{name}"},
    }
    out.update(by_type.get(typ, {}))
    return out


class ChatMocks(pulumi.runtime.Mocks):
    """Resources echo their inputs plus fake computed outputs; invokes answer fixed data."""

    def new_resource(self, args: MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        state = {**_computed(args.typ, args.name, args.inputs), **args.inputs}
        return f"{args.name}-id", state

    def call(self, args: MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]] | None]:
        answers: dict[str, dict[str, Any]] = {
            "aws:index/getRegion:getRegion": {"region": REGION, "name": REGION, "id": REGION},
            "aws:index/getCallerIdentity:getCallerIdentity": {
                "accountId": ACCOUNT,
                "arn": f"arn:aws:iam::{ACCOUNT}:user/test",
                "userId": "test",
                "id": ACCOUNT,
            },
            "aws:index/getAvailabilityZones:getAvailabilityZones": {
                "names": [f"{REGION}{z}" for z in "abcdef"],
                "zoneIds": [f"use1-az{i}" for i in range(1, 7)],
                "id": REGION,
            },
            "aws:route53/getZone:getZone": {
                "zoneId": "Z0123456789",
                "name": args.args.get("name"),
                "id": "Z0123456789",
            },
        }
        return answers.get(args.token, {}), []


def run_program(path: Path) -> Deployment:
    """Run the program as Pulumi does for one stack file; return what it registered."""
    stack = stack_name(path)
    mocks = ChatMocks()
    monitor = MockMonitor(mocks)
    pulumi_settings.ROOT.set(None)  # a fresh root Stack resource per run
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    config = stack_config(path)
    pulumi.runtime.set_all_config(config)
    settings = program.read_settings()

    @pulumi.runtime.test  # type: ignore[untyped-decorator,misc]
    def deploy() -> None:
        # Exactly what `pulumi up` runs for `main: infra/` (infra/__main__.py).
        runpy.run_path(str(ROOT / "infra"), run_name="__main__")

    deploy()
    deployment = Deployment(stack=stack, settings=settings)
    for urn, registration in monitor.get_registered_resources().items():
        typ = urn.split("::")[2].split("$")[-1]
        state = unwrap(registration.state)
        deployment.resources.append(Resource(urn, typ, urn.split("::")[-1], state))
    return deployment


def containers(task: Resource) -> list[dict[str, Any]]:
    """The container definitions of a task definition."""
    parsed: list[dict[str, Any]] = json.loads(task.state["containerDefinitions"])
    return parsed


def named(resources: list[Resource], part: str) -> Resource:
    """The one resource whose logical name ends with ``-<part>``."""
    found = [r for r in resources if r.name.endswith(f"-{part}")]
    assert len(found) == 1, f"expected one *-{part} in {[r.urn for r in resources]}"
    return found[0]
