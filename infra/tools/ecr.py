"""Build every image and push it to ECR, tagged with the git sha: `make images`.

    python -m infra.tools.ecr --stack dev [--dry-run] [--tag T] [--print-tag]

1. Make sure the repositories ``<prefix>/<image>`` exist (immutable tags, scan on
   push, encrypted, old images expired). They are shared by every stack of the
   account, so boto3 owns them here rather than one Pulumi stack.
2. Log Docker in with a token from ``ecr:GetAuthorizationToken`` (password on stdin).
3. Build the shared base image once, then each service image on top of it, and push.
   An image whose tag is already in ECR is skipped: tags are immutable, and a sha
   names one content.

The tag is ``git rev-parse --short HEAD``, with ``-dirty`` when the work tree has
uncommitted changes, so a pushed tag never claims a commit it does not match.
`make deploy` computes the same tag (``--print-tag``) for the stack's ``imageTag``.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import yaml  # type: ignore[import-untyped]
from botocore.exceptions import ClientError

from infra.settings import IMAGES, PROJECT

if TYPE_CHECKING:
    from mypy_boto3_ecr.client import ECRClient

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
#: The build context of every image: the repository root (see .dockerignore).
CONTEXT = "."
BASE_DOCKERFILE = "docker/base.Dockerfile"
#: Local tag of the shared base image; never pushed.
BASE_IMAGE = "chat-platform-base"
DOCKERFILES = {
    "gateway": "services/gateway/Dockerfile",
    "worker": "services/worker/Dockerfile",
    "priority": "services/priority/Dockerfile",
    "loadtest": "loadtest/Dockerfile",
}
PLATFORMS = {"X86_64": "linux/amd64", "ARM64": "linux/arm64"}
#: Images kept per repository; older ones expire (a rollback needs only recent ones).
KEEP_IMAGES = 50

Runner = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass(frozen=True)
class Command:
    """One external command; ``stdin`` (a password) is never shown."""

    argv: tuple[str, ...]
    stdin: str | None = None

    def shown(self) -> str:
        """The command as a shell line, for logs and --dry-run."""
        return shlex.join(self.argv) + (" < (password on stdin)" if self.stdin else "")


@dataclass(frozen=True)
class Login:
    """Registry credentials from ECR."""

    registry: str
    username: str
    password: str

    def command(self) -> Command:
        """``docker login`` with the password on stdin, never in argv."""
        return Command(
            ("docker", "login", "--username", self.username, "--password-stdin", self.registry),
            stdin=self.password,
        )


def image_tag(run: Runner = subprocess.run) -> str:
    """The short git sha of HEAD, ``-dirty`` if the work tree has changes."""
    sha = run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    status = run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    return f"{sha}-dirty" if status else sha


def repository_name(prefix: str, image: str) -> str:
    """``chat-platform/gateway``."""
    return f"{prefix}/{image}"


def ensure_repositories(client: ECRClient, prefix: str, images: Iterable[str]) -> dict[str, str]:
    """Create missing repositories; return image -> repository URI."""
    uris: dict[str, str] = {}
    lifecycle = json.dumps(
        {
            "rules": [
                {
                    "rulePriority": 1,
                    "description": f"keep the last {KEEP_IMAGES} images",
                    "selection": {
                        "tagStatus": "any",
                        "countType": "imageCountMoreThan",
                        "countNumber": KEEP_IMAGES,
                    },
                    "action": {"type": "expire"},
                }
            ]
        }
    )
    for image in images:
        name = repository_name(prefix, image)
        try:
            repo = client.describe_repositories(repositoryNames=[name])["repositories"][0]
        except client.exceptions.RepositoryNotFoundException:
            repo = client.create_repository(
                repositoryName=name,
                imageTagMutability="IMMUTABLE",
                imageScanningConfiguration={"scanOnPush": True},
                encryptionConfiguration={"encryptionType": "AES256"},
            )["repository"]
            client.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=lifecycle)
            log.info("created repository %s", name)
        uris[image] = repo["repositoryUri"]
    return uris


def login(client: ECRClient) -> Login:
    """Docker credentials for the account's registry."""
    data = client.get_authorization_token()["authorizationData"][0]
    username, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
    registry = data["proxyEndpoint"].removeprefix("https://")
    return Login(registry=registry, username=username, password=password)


def image_exists(client: ECRClient, repository: str, tag: str) -> bool:
    """Whether ``repository:tag`` is already in ECR."""
    try:
        client.describe_images(repositoryName=repository, imageIds=[{"imageTag": tag}])
    except client.exceptions.ImageNotFoundException:
        return False
    return True


def plan(uris: dict[str, str], tag: str, platform: str, skip: Iterable[str] = ()) -> list[Command]:
    """Docker commands building and pushing every image not in ``skip``."""
    todo = [image for image in uris if image not in set(skip)]
    if not todo:
        return []
    base = f"{BASE_IMAGE}:{tag}"
    commands = [
        Command(
            ("docker", "build", "--platform", platform, "-f", BASE_DOCKERFILE, "-t", base, CONTEXT)
        )
    ]
    for image in todo:
        target = f"{uris[image]}:{tag}"
        commands.append(
            Command(
                (
                    "docker",
                    "build",
                    "--platform",
                    platform,
                    "-f",
                    DOCKERFILES[image],
                    "--build-arg",
                    f"BASE_IMAGE={base}",
                    "-t",
                    target,
                    CONTEXT,
                )
            )
        )
        commands.append(Command(("docker", "push", target)))
    return commands


def execute(commands: Sequence[Command], run: Runner = subprocess.run) -> None:
    """Run each command from the repository root; stop at the first failure."""
    for command in commands:
        log.info("%s", command.shown())
        run(list(command.argv), cwd=ROOT, input=command.stdin, text=True, check=True)


def stack_settings(stack: str) -> tuple[str, str]:
    """(region, platform) from ``Pulumi.<stack>.yaml``."""
    config = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
    architecture = config.get(f"{PROJECT}:cpuArchitecture", "X86_64")
    return config.get("aws:region", "us-east-1"), PLATFORMS[architecture]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `make images`."""
    parser = argparse.ArgumentParser(prog="python -m infra.tools.ecr", description=__doc__)
    parser.add_argument("--stack", default="dev", help="read region and CPU architecture from it")
    parser.add_argument("--tag", help="image tag (default: the git sha)")
    parser.add_argument("--prefix", default=PROJECT, help="repository name prefix")
    parser.add_argument("--images", nargs="+", default=list(IMAGES), choices=IMAGES)
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    parser.add_argument("--print-tag", action="store_true", help="print the tag and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tag = args.tag or image_tag()
    if args.print_tag:
        print(tag)
        return 0
    region, platform = stack_settings(args.stack)
    client: ECRClient = boto3.client("ecr", region_name=region)
    try:
        uris = ensure_repositories(client, args.prefix, args.images)
        pushed = [i for i in uris if image_exists(client, repository_name(args.prefix, i), tag)]
        commands = plan(uris, tag, platform, skip=pushed)
        if commands:
            commands.insert(0, login(client).command())
    except ClientError as e:
        log.error("ECR: %s", e)
        return 1
    for image in pushed:
        log.info("%s:%s already in ECR, skipped", uris[image], tag)
    if args.dry_run:
        for command in commands:
            print(command.shown())
        return 0
    execute(commands)
    return 0


if __name__ == "__main__":
    sys.exit(main())
