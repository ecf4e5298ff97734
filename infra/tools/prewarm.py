"""Bring a stack to its load-test size and wait until it is steady: `make prewarm`.

    pulumi stack output --json --stack loadtest > outputs.json
    python -m infra.tools.prewarm --outputs outputs.json [--timeout 1800]
    python -m infra.tools.prewarm --outputs outputs.json --release

For each service in the stack outputs (``services``: name, min, max, prewarm):

1. raise the scalable target's minimum to the prewarm count, so target tracking
   cannot scale the fleet in during the run (a quiet minute would otherwise do it);
2. set the service's desired count to the prewarm count;
3. poll until every service has ``runningCount == desiredCount == prewarm`` and a
   single PRIMARY deployment whose rollout is COMPLETED, or fail at the timeout
   naming the services that are not there yet.

``--release`` puts the minimums back to the stack's config after the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import boto3

if TYPE_CHECKING:
    from mypy_boto3_ecs.client import ECSClient
    from mypy_boto3_ecs.type_defs import ServiceTypeDef

log = logging.getLogger(__name__)

#: DescribeServices accepts at most 10 services per call.
_DESCRIBE_BATCH = 10


class ApplicationAutoScalingClient(Protocol):
    """The one call we make (boto3-stubs for this service are not in the lock)."""

    def register_scalable_target(self, **kwargs: Any) -> Any:
        """boto3's ``register_scalable_target``."""


class PrewarmTimeout(RuntimeError):
    """Some services did not reach their prewarm count in time."""


@dataclass(frozen=True)
class Target:
    """One ECS service and the sizes the stack gives it."""

    service: str
    name: str
    minimum: int
    maximum: int
    prewarm: int

    def resource_id(self, cluster: str) -> str:
        """The Application Auto Scaling id of the service."""
        return f"service/{cluster}/{self.name}"


@dataclass(frozen=True)
class Plan:
    """What the stack outputs say about the fleet."""

    region: str
    cluster: str
    targets: tuple[Target, ...]


def plan_from_outputs(outputs: Mapping[str, Any]) -> Plan:
    """Read ``pulumi stack output --json`` of a stack of this project."""
    targets = tuple(
        Target(
            service=service,
            name=str(spec["name"]),
            minimum=int(spec["min"]),
            maximum=int(spec["max"]),
            prewarm=int(spec["prewarm"]),
        )
        for service, spec in sorted(outputs["services"].items())
    )
    return Plan(region=str(outputs["region"]), cluster=str(outputs["cluster"]), targets=targets)


def set_minimums(
    autoscaling: ApplicationAutoScalingClient, plan: Plan, *, release: bool = False
) -> None:
    """Pin each min to the prewarm count (or, with ``release``, back to the config)."""
    for t in plan.targets:
        minimum = t.minimum if release else t.prewarm
        autoscaling.register_scalable_target(
            ServiceNamespace="ecs",
            ResourceId=t.resource_id(plan.cluster),
            ScalableDimension="ecs:service:DesiredCount",
            MinCapacity=minimum,
            MaxCapacity=max(t.maximum, minimum),
        )
        log.info("service=%s min=%d", t.service, minimum)


def set_desired(ecs: ECSClient, plan: Plan) -> None:
    """Ask ECS for the prewarm count of every service."""
    for t in plan.targets:
        ecs.update_service(cluster=plan.cluster, service=t.name, desiredCount=t.prewarm)
        log.info("service=%s desired=%d", t.service, t.prewarm)


def is_steady(service: ServiceTypeDef, want: int) -> bool:
    """All wanted tasks run and the one deployment has finished rolling out."""
    deployments = service.get("deployments", [])
    return (
        service.get("desiredCount") == want
        and service.get("runningCount") == want
        and len(deployments) == 1
        and deployments[0].get("status") == "PRIMARY"
        and deployments[0].get("rolloutState") == "COMPLETED"
    )


def unsteady(ecs: ECSClient, plan: Plan) -> dict[str, str]:
    """Services not yet steady -> 'running/desired rollout' of each."""
    by_name = {t.name: t for t in plan.targets}
    names = list(by_name)
    waiting: dict[str, str] = {}
    for start in range(0, len(names), _DESCRIBE_BATCH):
        batch = names[start : start + _DESCRIBE_BATCH]
        for svc in ecs.describe_services(cluster=plan.cluster, services=batch)["services"]:
            target = by_name[svc["serviceName"]]
            if not is_steady(svc, target.prewarm):
                rollouts = ",".join(d.get("rolloutState", "?") for d in svc.get("deployments", []))
                waiting[target.service] = (
                    f"{svc.get('runningCount')}/{target.prewarm} running, rollout {rollouts}"
                )
    return waiting


def wait_steady(
    ecs: ECSClient,
    plan: Plan,
    *,
    timeout_s: float,
    poll_s: float = 15.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Poll until every service is steady; raise :class:`PrewarmTimeout` at the deadline."""
    deadline = clock() + timeout_s
    while True:
        waiting = unsteady(ecs, plan)
        if not waiting:
            log.info("all %d services steady", len(plan.targets))
            return
        if clock() >= deadline:
            details = "; ".join(f"{svc}: {state}" for svc, state in sorted(waiting.items()))
            raise PrewarmTimeout(f"not steady after {timeout_s:g} s: {details}")
        log.info("waiting: %s", waiting)
        sleep(poll_s)


def prewarm(
    ecs: ECSClient,
    autoscaling: ApplicationAutoScalingClient,
    plan: Plan,
    *,
    timeout_s: float,
    poll_s: float = 15.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Pin the minimums, raise the desired counts and wait until steady."""
    set_minimums(autoscaling, plan)
    set_desired(ecs, plan)
    wait_steady(ecs, plan, timeout_s=timeout_s, poll_s=poll_s, sleep=sleep, clock=clock)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `make prewarm` and `make prewarm-release`."""
    parser = argparse.ArgumentParser(prog="python -m infra.tools.prewarm", description=__doc__)
    parser.add_argument("--outputs", type=Path, required=True, help="pulumi stack output --json")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait")
    parser.add_argument("--poll", type=float, default=15.0, help="seconds between checks")
    parser.add_argument("--release", action="store_true", help="restore the configured minimums")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    plan = plan_from_outputs(json.loads(args.outputs.read_text()))
    autoscaling: ApplicationAutoScalingClient = boto3.client(
        "application-autoscaling", region_name=plan.region
    )
    if args.release:
        set_minimums(autoscaling, plan, release=True)
        return 0
    ecs: ECSClient = boto3.client("ecs", region_name=plan.region)
    try:
        prewarm(ecs, autoscaling, plan, timeout_s=args.timeout, poll_s=args.poll)
    except PrewarmTimeout as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
