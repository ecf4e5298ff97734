"""The boto3 tools of `make images` and `make prewarm`, against moto."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from moto import mock_aws
from moto.ecs.models import ecs_backends

from infra.settings import IMAGES
from infra.tools import ecr, prewarm

if TYPE_CHECKING:
    from mypy_boto3_ecr.client import ECRClient
    from mypy_boto3_ecs.client import ECSClient

REGION = "us-east-1"
#: The account moto plays (moto.core.DEFAULT_ACCOUNT_ID).
DEFAULT_ACCOUNT_ID = "123456789012"
CLUSTER = "chat-test-cluster"


@pytest.fixture(autouse=True)
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test runs inside moto with fake credentials."""
    for var, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(var, value)
    with mock_aws():
        yield


# --- ECR -----------------------------------------------------------------------------


@pytest.fixture
def ecr_client() -> ECRClient:
    """An ECR client on moto."""
    return boto3.client("ecr", region_name=REGION)


def test_ensure_repositories_creates_immutable_scanned_repos_once(ecr_client: ECRClient) -> None:
    """Missing repositories are created immutable and scanned; existing ones are reused."""
    first = ecr.ensure_repositories(ecr_client, "chat-platform", IMAGES)
    second = ecr.ensure_repositories(ecr_client, "chat-platform", IMAGES)
    assert first == second
    assert set(first) == set(IMAGES)
    repos = ecr_client.describe_repositories()["repositories"]
    assert sorted(r["repositoryName"] for r in repos) == sorted(
        f"chat-platform/{i}" for i in IMAGES
    )
    for repo in repos:
        assert repo["imageTagMutability"] == "IMMUTABLE", repo["repositoryName"]
        assert repo["imageScanningConfiguration"]["scanOnPush"] is True
        policy = ecr_client.get_lifecycle_policy(repositoryName=repo["repositoryName"])
        assert "imageCountMoreThan" in policy["lifecyclePolicyText"]


def test_login_decodes_the_token_and_keeps_the_password_off_argv(ecr_client: ECRClient) -> None:
    """docker login gets the registry and user in argv and the password only on stdin."""
    login = ecr.login(ecr_client)
    command = login.command()
    assert login.username == "AWS"
    assert login.password
    assert login.password not in command.argv
    assert command.stdin == login.password
    assert command.argv[-1] == login.registry
    assert "https://" not in login.registry
    assert login.password not in command.shown()


def test_plan_builds_base_once_then_builds_and_pushes_each_image(ecr_client: ECRClient) -> None:
    """The plan tags every image with the sha, on the shared base, for the stack's platform."""
    uris = ecr.ensure_repositories(ecr_client, "chat-platform", IMAGES)
    commands = ecr.plan(uris, "abc1234", "linux/amd64")
    argvs = [c.argv for c in commands]
    assert argvs[0][:2] == ("docker", "build")
    assert ecr.BASE_DOCKERFILE in argvs[0]
    pushes = [a[-1] for a in argvs if a[:2] == ("docker", "push")]
    assert pushes == [f"{uris[i]}:abc1234" for i in IMAGES]
    for image in IMAGES:
        build = next(a for a in argvs if ecr.DOCKERFILES[image] in a)
        assert "BASE_IMAGE=chat-platform-base:abc1234" in build
        assert build[-1] == ecr.CONTEXT
        assert "linux/amd64" in build


def test_images_already_in_ecr_are_skipped(ecr_client: ECRClient) -> None:
    """A tag already pushed is neither rebuilt nor pushed again (tags are immutable)."""
    uris = ecr.ensure_repositories(ecr_client, "chat-platform", IMAGES)
    ecr_client.put_image(
        repositoryName="chat-platform/gateway",
        imageManifest='{"schemaVersion": 2, "config": {"digest": "sha256:00"}, "layers": []}',
        imageManifestMediaType="application/vnd.docker.distribution.manifest.v2+json",
        imageTag="abc1234",
    )
    assert ecr.image_exists(ecr_client, "chat-platform/gateway", "abc1234")
    assert not ecr.image_exists(ecr_client, "chat-platform/worker", "abc1234")
    commands = ecr.plan(uris, "abc1234", "linux/amd64", skip=["gateway"])
    assert not any(ecr.DOCKERFILES["gateway"] in c.argv for c in commands)
    assert ecr.plan(uris, "abc1234", "linux/amd64", skip=IMAGES) == []


def test_dry_run_prints_the_plan_without_running_docker(capsys: pytest.CaptureFixture[str]) -> None:
    """--dry-run creates the repositories and prints login, builds and pushes."""
    assert ecr.main(["--stack", "dev", "--tag", "abc1234", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("docker login --username AWS --password-stdin")
    assert sum(line.startswith("docker push") for line in out) == len(IMAGES)


def test_image_tag_marks_a_dirty_tree() -> None:
    """The tag is the short sha, with -dirty when git status shows changes."""

    def fake_git(status: str) -> Any:
        def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
            out = "abc1234\n" if "rev-parse" in argv else status
            return subprocess.CompletedProcess(argv, 0, stdout=out)

        return run

    assert ecr.image_tag(fake_git("")) == "abc1234"
    assert ecr.image_tag(fake_git(" M infra/program.py\n")) == "abc1234-dirty"


# --- prewarm -------------------------------------------------------------------------


def outputs(counts: dict[str, int]) -> dict[str, Any]:
    """Stack outputs as `pulumi stack output --json` prints them."""
    return {
        "region": REGION,
        "cluster": CLUSTER,
        "services": {
            svc: {"name": f"chat-test-{svc}", "min": 1, "max": 200, "prewarm": n}
            for svc, n in counts.items()
        },
    }


@pytest.fixture
def ecs(monkeypatch: pytest.MonkeyPatch) -> ECSClient:
    """A moto cluster with one service per name, each at 1 task, deployments complete."""
    monkeypatch.setenv("MOTO_ECS_SERVICE_RUNNING", "1")
    client: ECSClient = boto3.client("ecs", region_name=REGION)
    client.create_cluster(clusterName=CLUSTER)
    client.register_task_definition(
        family="chat", containerDefinitions=[{"name": "app", "image": "app", "memory": 512}]
    )
    for svc in ("gateway", "worker", "priority"):
        client.create_service(
            cluster=CLUSTER, serviceName=f"chat-test-{svc}", taskDefinition="chat", desiredCount=1
        )
    return client


def autoscaling_client() -> Any:
    """An Application Auto Scaling client on moto."""
    return boto3.client("application-autoscaling", region_name=REGION)


class FakeTime:
    """A clock that advances only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        self.now += seconds


def test_prewarm_raises_counts_pins_minimums_and_returns_when_steady(ecs: ECSClient) -> None:
    """Desired counts reach the prewarm size, min capacity is pinned, and it returns."""
    plan = prewarm.plan_from_outputs(outputs({"gateway": 150, "worker": 120, "priority": 30}))
    autoscaling = autoscaling_client()
    fake = FakeTime()
    prewarm.prewarm(ecs, autoscaling, plan, timeout_s=60, sleep=fake.sleep, clock=fake.clock)
    described = ecs.describe_services(cluster=CLUSTER, services=[t.name for t in plan.targets])
    counts = {
        s["serviceName"]: (s["desiredCount"], s["runningCount"]) for s in described["services"]
    }
    assert counts == {
        "chat-test-gateway": (150, 150),
        "chat-test-worker": (120, 120),
        "chat-test-priority": (30, 30),
    }
    targets = autoscaling.describe_scalable_targets(ServiceNamespace="ecs")["ScalableTargets"]
    assert {t["ResourceId"]: t["MinCapacity"] for t in targets} == {
        f"service/{CLUSTER}/chat-test-gateway": 150,
        f"service/{CLUSTER}/chat-test-worker": 120,
        f"service/{CLUSTER}/chat-test-priority": 30,
    }
    assert fake.sleeps == 0


def test_prewarm_waits_for_an_unfinished_rollout(ecs: ECSClient) -> None:
    """A service whose deployment is still rolling out is polled until it completes."""
    plan = prewarm.plan_from_outputs(outputs({"gateway": 3, "worker": 2, "priority": 1}))
    backend = ecs_backends[DEFAULT_ACCOUNT_ID][REGION]
    deployment = backend.services[f"{CLUSTER}:chat-test-worker"].deployments[0]
    deployment["rolloutState"] = "IN_PROGRESS"
    fake = FakeTime()

    def sleep(seconds: float) -> None:
        fake.sleep(seconds)
        if fake.sleeps == 2:
            deployment["rolloutState"] = "COMPLETED"

    prewarm.prewarm(
        ecs, autoscaling_client(), plan, timeout_s=600, poll_s=15, sleep=sleep, clock=fake.clock
    )
    assert fake.sleeps == 2


def test_prewarm_times_out_naming_the_unsteady_services(ecs: ECSClient) -> None:
    """At the deadline it raises, naming each service that is not steady and why."""
    plan = prewarm.plan_from_outputs(outputs({"gateway": 2, "worker": 2, "priority": 2}))
    backend = ecs_backends[DEFAULT_ACCOUNT_ID][REGION]
    backend.services[f"{CLUSTER}:chat-test-priority"].deployments[0]["rolloutState"] = "FAILED"
    fake = FakeTime()
    with pytest.raises(prewarm.PrewarmTimeout, match=r"priority: 2/2 running, rollout FAILED"):
        prewarm.prewarm(
            ecs,
            autoscaling_client(),
            plan,
            timeout_s=60,
            poll_s=15,
            sleep=fake.sleep,
            clock=fake.clock,
        )
    assert fake.sleeps == 4


def test_release_restores_the_configured_minimums(ecs: ECSClient) -> None:
    """--release puts each service's min capacity back to the stack's config."""
    plan = prewarm.plan_from_outputs(outputs({"gateway": 5, "worker": 5, "priority": 5}))
    autoscaling = autoscaling_client()
    prewarm.set_minimums(autoscaling, plan)
    prewarm.set_minimums(autoscaling, plan, release=True)
    targets = autoscaling.describe_scalable_targets(ServiceNamespace="ecs")["ScalableTargets"]
    assert {t["MinCapacity"] for t in targets} == {1}
    assert {t["MaxCapacity"] for t in targets} == {200}
