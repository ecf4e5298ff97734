"""Security properties of every stack: reachability, encryption, IAM, secrets."""

from __future__ import annotations

import json
from typing import Any

from infra.catalog import SECRET_ENV
from infra.components.network import DATA_CLIENTS, DATA_STORES
from infra.settings import FARGATE_MAX_STOP_TIMEOUT_S
from tests.infra.stack_harness import PASSWORD_MARK, Deployment, Resource, containers

ECS_SERVICE = "aws:ecs/service:Service"
TASK_DEFINITION = "aws:ecs/taskDefinition:TaskDefinition"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
PUBLIC_CIDRS = {"0.0.0.0/0", "::/0"}
#: Resources that legitimately hold a generated password: the generator, the stores it
#: configures and the secret versions carrying it.
PASSWORD_HOLDERS = {
    "random:index/randomPassword:RandomPassword",
    "aws:secretsmanager/secretVersion:SecretVersion",
    "aws:elasticache/replicationGroup:ReplicationGroup",
    "aws:memorydb/user:User",
    "aws:docdb/cluster:Cluster",
    "aws:docdb/elasticCluster:ElasticCluster",
    "aws:rds/instance:Instance",
}


def group_id(deployment: Deployment, key: str) -> str:
    """The (mock) id of the security group ``chat-<stack>-<key>``."""
    return f"chat-{deployment.stack}-{key}-id"


def statements(policy: Resource) -> list[dict[str, Any]]:
    """The statements of an IAM role policy."""
    parsed: list[dict[str, Any]] = json.loads(policy.state["policy"])["Statement"]
    return parsed


def test_only_the_alb_is_open_to_the_internet(deployment: Deployment) -> None:
    """The only ingress from a public CIDR is ports 80/443 of the ALB's security group."""
    for rule in deployment.of_type(INGRESS):
        cidrs = {rule.state.get("cidrIpv4"), rule.state.get("cidrIpv6")} & PUBLIC_CIDRS
        if cidrs:
            assert rule.state["securityGroupId"] == group_id(deployment, "alb"), rule.urn
            assert rule.state["fromPort"] in (80, 443), rule.urn


def test_data_stores_are_reached_only_by_tasks(deployment: Deployment) -> None:
    """Each store's group admits only its client tasks' groups, on the store's port."""
    rules = deployment.of_type(INGRESS)
    for store, port in DATA_STORES.items():
        mine = [r for r in rules if r.state["securityGroupId"] == group_id(deployment, store)]
        sources = {r.state.get("referencedSecurityGroupId") for r in mine}
        assert sources == {group_id(deployment, c) for c in DATA_CLIENTS[store]}, store
        for rule in mine:
            assert "cidrIpv4" not in rule.state, rule.urn
            assert "cidrIpv6" not in rule.state, rule.urn
            assert rule.state["fromPort"] == rule.state["toPort"] == port, rule.urn


def test_gateways_are_reached_only_by_alb_and_publishers(deployment: Deployment) -> None:
    """Gateways admit the ALB on 8080 and worker/priority on the fan-out port, nothing else."""
    gateway = group_id(deployment, "gateway")
    allowed = {
        (group_id(deployment, "alb"), 8080),
        (group_id(deployment, "worker"), 5560),
        (group_id(deployment, "priority"), 5560),
    }
    found = {
        (r.state.get("referencedSecurityGroupId"), r.state["fromPort"])
        for r in deployment.of_type(INGRESS)
        if r.state["securityGroupId"] == gateway
    }
    assert found == allowed
    for task in ("worker", "priority", "loadtest"):
        assert not [
            r.urn
            for r in deployment.of_type(INGRESS)
            if r.state["securityGroupId"] == group_id(deployment, task)
        ], f"{task} tasks accept inbound connections"


def test_tasks_and_databases_are_private(deployment: Deployment) -> None:
    """Services use private subnets without public IPs; RDS is not publicly accessible."""
    for service in deployment.of_type(ECS_SERVICE):
        network = service.state["networkConfiguration"]
        assert network["assignPublicIp"] is False, service.urn
        assert all("-private-" in subnet for subnet in network["subnets"]), service.urn
    for db in deployment.of_type("aws:rds/instance:Instance"):
        assert db.state["publiclyAccessible"] is False, db.urn
    for subnet in deployment.of_type("aws:ec2/subnet:Subnet"):
        assert subnet.state["mapPublicIpOnLaunch"] is False, subnet.urn


def _encrypted(r: Resource) -> bool:
    """At rest and in transit, by the store's own settings."""
    s = r.state
    if r.type == "aws:elasticache/replicationGroup:ReplicationGroup":
        return bool(
            s["atRestEncryptionEnabled"] and s["transitEncryptionEnabled"] and s["kmsKeyId"]
        )
    if r.type == "aws:memorydb/cluster:Cluster":
        return bool(s["tlsEnabled"] and s["kmsKeyArn"])
    if r.type == "aws:docdb/cluster:Cluster":
        return bool(s["storageEncrypted"] and s["kmsKeyId"])
    if r.type == "aws:docdb/elasticCluster:ElasticCluster":
        return bool(s["kmsKeyId"])  # TLS is always on for elastic clusters
    if r.type == "aws:rds/instance:Instance":
        return bool(s["storageEncrypted"] and s["kmsKeyId"])
    if r.type == "aws:secretsmanager/secret:Secret":
        return bool(s["kmsKeyId"])
    raise AssertionError(r.urn)


def test_every_store_is_encrypted_at_rest_and_in_transit(deployment: Deployment) -> None:
    """Each store uses the stack key and TLS; TLS is forced by parameter or bucket policy."""
    stores = [
        r
        for r in deployment.resources
        if r.type
        in {
            "aws:elasticache/replicationGroup:ReplicationGroup",
            "aws:memorydb/cluster:Cluster",
            "aws:docdb/cluster:Cluster",
            "aws:docdb/elasticCluster:ElasticCluster",
            "aws:rds/instance:Instance",
            "aws:secretsmanager/secret:Secret",
        }
    ]
    assert stores
    for store in stores:
        assert _encrypted(store), f"{store.urn} is not encrypted at rest and in transit"
    for group in deployment.of_type("aws:docdb/clusterParameterGroup:ClusterParameterGroup"):
        assert {"name": "tls", "value": "enabled"} in group.state["parameters"], group.urn
    for group in deployment.of_type("aws:rds/parameterGroup:ParameterGroup"):
        params = {p["name"]: p["value"] for p in group.state["parameters"]}
        assert params["require_secure_transport"] == "1", group.urn
    (sse,) = deployment.of_type(
        "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
    )
    rule = sse.state["rules"][0]["applyServerSideEncryptionByDefault"]
    assert rule["sseAlgorithm"] == "aws:kms", sse.urn
    assert rule["kmsMasterKeyId"], sse.urn
    (policy,) = deployment.of_type("aws:s3/bucketPolicy:BucketPolicy")
    (deny,) = json.loads(policy.state["policy"])["Statement"]
    assert deny["Effect"] == "Deny", policy.urn
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}, policy.urn
    (block,) = deployment.of_type("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    flags = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    assert all(block.state[f] is True for f in flags), block.urn


def test_services_pin_platform_and_roll_back(deployment: Deployment) -> None:
    """Fargate 1.4.0, circuit breaker with rollback, desired count left to autoscaling."""
    for service in deployment.of_type(ECS_SERVICE):
        assert service.state["platformVersion"] == "1.4.0", service.urn
        assert service.state["launchType"] == "FARGATE", service.urn
        breaker = service.state["deploymentCircuitBreaker"]
        assert breaker == {"enable": True, "rollback": True}, service.urn


def test_stickiness_is_on(deployment: Deployment) -> None:
    """The gateway target group keeps a client on its gateway with the ALB cookie."""
    (tg,) = deployment.of_type("aws:lb/targetGroup:TargetGroup")
    stickiness = tg.state["stickiness"]
    assert stickiness["enabled"] is True, tg.urn
    assert stickiness["type"] == "lb_cookie", tg.urn


def test_containers_drain_before_sigkill(deployment: Deployment) -> None:
    """stopTimeout exceeds SHUTDOWN_TIMEOUT_S, within Fargate's limit; logs are retained."""
    for task in deployment.of_type(TASK_DEFINITION):
        for container in containers(task):
            env = {e["name"]: e["value"] for e in container["environment"]}
            drain = float(env["SHUTDOWN_TIMEOUT_S"])
            assert drain < container["stopTimeout"] <= FARGATE_MAX_STOP_TIMEOUT_S, task.urn
            assert container["logConfiguration"]["logDriver"] == "awslogs", task.urn
            if container["name"] != "loadtest":
                assert container["healthCheck"]["command"][-1] == "--check", task.urn
    for group in deployment.of_type("aws:cloudwatch/logGroup:LogGroup"):
        assert group.state["retentionInDays"] == deployment.settings.log_retention_days, group.urn


def test_task_roles_have_no_wildcard_actions(deployment: Deployment) -> None:
    """No task-role statement allows ``*`` or ``service:*`` actions."""
    policies = [
        p for p in deployment.of_type("aws:iam/rolePolicy:RolePolicy") if p.name.endswith("-task")
    ]
    assert len(policies) == 4
    for policy in policies:
        for statement in statements(policy):
            actions = statement["Action"]
            for action in [actions] if isinstance(actions, str) else actions:
                assert "*" not in action, f"{policy.urn} allows {action}"


def test_one_execution_and_task_role_per_service(deployment: Deployment) -> None:
    """Each task definition has its own roles; an execution role reads only its secrets."""
    policies = {p.name: p for p in deployment.of_type("aws:iam/rolePolicy:RolePolicy")}
    for task in deployment.of_type(TASK_DEFINITION):
        service = task.name.removeprefix(f"chat-{deployment.stack}-")
        assert task.state["taskRoleArn"].endswith(f"-{service}-task"), task.urn
        assert task.state["executionRoleArn"].endswith(f"-{service}-execution"), task.urn
        (container,) = containers(task)
        wanted = sorted(s["valueFrom"] for s in container["secrets"])
        execution = policies[f"chat-{deployment.stack}-{service}-execution"]
        readable = next(s for s in statements(execution) if s["Sid"] == "ReadOwnSecrets")
        assert sorted(readable["Resource"]) == wanted, execution.urn


def test_secrets_only_through_secrets_manager(deployment: Deployment) -> None:
    """Secret settings come as ECS secrets from this stack's Secrets Manager secrets only."""
    secret_arns = {r.state["arn"] for r in deployment.of_type("aws:secretsmanager/secret:Secret")}
    for task in deployment.of_type(TASK_DEFINITION):
        for container in containers(task):
            plain = {e["name"] for e in container["environment"]}
            assert not plain & set(SECRET_ENV), f"{task.urn} passes {plain & set(SECRET_ENV)}"
            for secret in container["secrets"]:
                assert secret["name"] in SECRET_ENV, task.urn
                assert secret["valueFrom"] in secret_arns, task.urn


def test_generated_passwords_never_leave_their_holders(deployment: Deployment) -> None:
    """No generated password appears in any resource but the stores and secret versions."""
    for r in deployment.resources:
        if r.type not in PASSWORD_HOLDERS:
            assert PASSWORD_MARK not in json.dumps(r.state), f"{r.urn} contains a password"
    versions = deployment.of_type("aws:secretsmanager/secretVersion:SecretVersion")
    assert len(versions) == len(SECRET_ENV)
    for version in versions:
        assert PASSWORD_MARK in version.state["secretString"], version.urn
