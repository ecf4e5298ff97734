"""Every stack file builds the whole topology: tiers, services, stores, listeners, alarms."""

from __future__ import annotations

from infra.catalog import CATALOG
from infra.settings import SERVICES
from tests.infra.stack_harness import Deployment, containers, named

ECS_SERVICE = "aws:ecs/service:Service"
TASK_DEFINITION = "aws:ecs/taskDefinition:TaskDefinition"
TIERS = ("Network", "Edge", "Data", "Iam", "Compute", "Scaling", "Observability")
#: The load-test fleet the issue sizes the loadtest stacks for.
LOADTEST_TASKS = 300


def test_one_component_per_tier(deployment: Deployment) -> None:
    """Each tier is one chat:infra ComponentResource and every AWS resource sits under one."""
    for tier in TIERS:
        assert any(f"chat:infra:{tier}::" in r.urn for r in deployment.resources) or any(
            f"chat:infra:{tier}$" in r.urn for r in deployment.resources
        ), f"no chat:infra:{tier} component in stack {deployment.stack}"
    for r in deployment.resources:
        if r.type.startswith(("aws:", "random:")):
            assert "chat:infra:" in r.urn, f"{r.urn} is not parented to a tier component"


def test_every_service_has_a_task_definition_and_services_run(deployment: Deployment) -> None:
    """gateway/worker/priority are ECS services; every catalog image has a task definition."""
    tasks = deployment.of_type(TASK_DEFINITION)
    services = deployment.of_type(ECS_SERVICE)
    for name in CATALOG:
        task = named(tasks, name)
        (container,) = containers(task)
        assert container["name"] == name, task.urn
        assert container["image"].endswith(f"/{name}:abc1234"), task.urn
    assert sorted(r.name.rsplit("-", 1)[-1] for r in services) == sorted(SERVICES)
    for svc in SERVICES:
        service = named(services, svc)
        assert service.state["desiredCount"] == deployment.settings.service(svc).desired, (
            service.urn
        )


def test_network_spans_three_zones_with_nat(deployment: Deployment) -> None:
    """Public and private subnets in each of 3 AZs; NAT count and default routes as configured."""
    subnets = deployment.of_type("aws:ec2/subnet:Subnet")
    for tier in ("public", "private"):
        zones = {s.state["availabilityZone"] for s in subnets if f"-{tier}-" in s.name}
        assert len(zones) == deployment.settings.network.az_count == 3, zones
    nats = deployment.of_type("aws:ec2/natGateway:NatGateway")
    assert len(nats) == deployment.settings.network.nat_gateways
    routes = deployment.of_type("aws:ec2/route:Route")
    assert sum("natGatewayId" in r.state for r in routes) == 3


def test_every_data_store_exists(deployment: Deployment) -> None:
    """Redis (ElastiCache or MemoryDB), DocumentDB (instance or elastic), MySQL + replicas, S3."""
    s = deployment.settings
    if s.redis.backend == "memorydb":
        (cluster,) = deployment.of_type("aws:memorydb/cluster:Cluster")
        assert cluster.state["numShards"] == s.redis.shards, cluster.urn
    else:
        (group,) = deployment.of_type("aws:elasticache/replicationGroup:ReplicationGroup")
        assert group.state["clusterMode"] == "enabled", group.urn
        assert group.state["numNodeGroups"] == s.redis.shards, group.urn
    if s.documentdb.mode == "elastic":
        (elastic,) = deployment.of_type("aws:docdb/elasticCluster:ElasticCluster")
        assert elastic.state["shardCount"] == s.documentdb.shard_count, elastic.urn
    else:
        assert len(deployment.of_type("aws:docdb/cluster:Cluster")) == 1
        instances = deployment.of_type("aws:docdb/clusterInstance:ClusterInstance")
        assert len(instances) == s.documentdb.instances
    databases = deployment.of_type("aws:rds/instance:Instance")
    replicas = [d for d in databases if "replicateSourceDb" in d.state]
    assert len(databases) - len(replicas) == 1
    assert len(replicas) == s.mysql.read_replicas
    primary = next(d for d in databases if d not in replicas)
    assert primary.state["multiAz"] == s.mysql.multi_az, primary.urn
    assert len(deployment.of_type("aws:s3/bucket:Bucket")) == 1


def test_listeners_redirect_http_and_serve_https(deployment: Deployment) -> None:
    """Port 80 redirects to HTTPS; port 443 terminates TLS with the ACM cert and forwards."""
    listeners = {int(r.state["port"]): r for r in deployment.of_type("aws:lb/listener:Listener")}
    assert sorted(listeners) == [80, 443]
    (redirect,) = listeners[80].state["defaultActions"]
    assert redirect["type"] == "redirect", listeners[80].urn
    assert redirect["redirect"]["protocol"] == "HTTPS", listeners[80].urn
    https = listeners[443]
    assert https.state["protocol"] == "HTTPS", https.urn
    assert https.state["certificateArn"].startswith("arn:aws:acm:"), https.urn
    assert https.state["sslPolicy"].startswith("ELBSecurityPolicy-TLS13"), https.urn
    (forward,) = https.state["defaultActions"]
    assert forward["type"] == "forward", https.urn


def test_alb_suits_websockets(deployment: Deployment) -> None:
    """Long idle timeout, short deregistration delay, /healthz checks, alias record."""
    (alb,) = deployment.of_type("aws:lb/loadBalancer:LoadBalancer")
    assert alb.state["idleTimeout"] >= 300, alb.urn
    assert alb.state["internal"] is False, alb.urn
    (tg,) = deployment.of_type("aws:lb/targetGroup:TargetGroup")
    assert tg.state["healthCheck"]["path"] == "/healthz", tg.urn
    assert tg.state["targetType"] == "ip", tg.urn
    assert tg.state["deregistrationDelay"] <= 60, tg.urn
    capacity = alb.state.get("minimumLoadBalancerCapacity", {}).get("capacityUnits", 0)
    assert capacity == deployment.settings.edge.capacity_units, alb.urn
    records = deployment.of_type("aws:route53/record:Record")
    alias = [r for r in records if r.state.get("aliases")]
    assert [r.state["name"] for r in alias] == [deployment.settings.domain_name]


def test_autoscaling_per_service(deployment: Deployment) -> None:
    """Gateways track CPU at the configured %, consumers track stream lag per task."""
    targets = deployment.of_type("aws:appautoscaling/target:Target")
    policies = deployment.of_type("aws:appautoscaling/policy:Policy")
    for svc in SERVICES:
        size = deployment.settings.service(svc)
        target = named(targets, svc)
        assert (target.state["minCapacity"], target.state["maxCapacity"]) == (
            size.min_tasks,
            size.max_tasks,
        ), target.urn
        config = named(policies, svc).state["targetTrackingScalingPolicyConfiguration"]
        assert config["targetValue"] == size.scale_target, target.urn
        if svc == "gateway":
            spec = config["predefinedMetricSpecification"]
            assert spec["predefinedMetricType"] == "ECSServiceAverageCPUUtilization"
        else:
            metrics = config["customizedMetricSpecification"]["metrics"]
            lag = next(m for m in metrics if m["id"] == "lag")["metricStat"]["metric"]
            assert lag["metricName"] == "StreamLag"
            assert lag["dimensions"] == [{"name": "Service", "value": svc}]


def test_observability_alarms_and_dashboard(deployment: Deployment) -> None:
    """A dashboard covers every tier; alarms exist for the edge, each service and each store."""
    alarms = {
        r.name.split(f"chat-{deployment.stack}-", 1)[1]
        for r in deployment.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
    }
    expected = {
        "alb-5xx",
        "gateway-5xx",
        "gateway-unhealthy",
        "mysql-cpu",
        "documentdb-cpu",
        "live-latency-p99",
        "priority-lag-age",
        "worker-lag-age",
    }
    expected |= {f"{svc}-{what}" for svc in SERVICES for what in ("cpu", "memory")}
    expected |= {f"mysql-replica-{i}-lag" for i in range(deployment.settings.mysql.read_replicas)}
    if deployment.settings.redis.backend == "memorydb":
        expected |= {"redis-cpu", "redis-memory"}
    else:
        expected |= {f"redis-1-{m}" for m in ("cpu", "memory")}
    missing = expected - alarms
    assert not missing, f"stack {deployment.stack} lacks alarms {sorted(missing)}"
    (dashboard,) = deployment.of_type("aws:cloudwatch/dashboard:Dashboard")
    body = dashboard.state["dashboardBody"]
    for needle in (
        "AWS/ApplicationELB",
        "AWS/ECS",
        "AWS/DocDB",
        "AWS/RDS",
        "StreamLag",
        "LiveLatency",
        "EngineCPUUtilization",
    ):
        assert needle in body, f"{dashboard.urn} has no {needle} widget"


def test_loadtest_stacks_run_300_tasks(deployment: Deployment) -> None:
    """In loadtest stacks gateway+worker+priority desired and prewarm counts add up to 300."""
    if not deployment.stack.startswith("loadtest"):
        return
    services = deployment.of_type(ECS_SERVICE)
    assert sum(s.state["desiredCount"] for s in services) == LOADTEST_TASKS
    prewarm = sum(deployment.settings.service(svc).prewarm_tasks for svc in SERVICES)
    assert prewarm == LOADTEST_TASKS
