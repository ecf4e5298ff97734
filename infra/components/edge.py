"""Edge tier: the public ALB in front of the gateways, its certificate and DNS name.

WebSockets shape every setting here: the load-balancer cookie keeps a browser's HTTP
calls on the gateway that holds its socket, the idle timeout outlives the quiet
minutes between pings, and the deregistration delay is short because gateways drain
their own sockets on SIGTERM (``reconnect`` frame, then close) within ECS stopTimeout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import ports
from infra.settings import EdgeSettings

HEALTH_PATH = "/healthz"


@dataclass(frozen=True)
class EdgeArgs:
    """Inputs of the edge tier."""

    name: str
    settings: EdgeSettings
    domain_name: str
    hosted_zone_name: str
    #: An existing ACM certificate; empty issues and DNS-validates one.
    certificate_arn: str
    vpc_id: pulumi.Input[str]
    public_subnet_ids: Sequence[pulumi.Input[str]]
    security_group_id: pulumi.Input[str]


class Edge(pulumi.ComponentResource):
    """ALB, HTTPS and HTTP listeners, the gateway target group, certificate and alias."""

    url: pulumi.Output[str]
    alb_arn_suffix: pulumi.Output[str]
    target_group_arn: pulumi.Output[str]
    target_group_arn_suffix: pulumi.Output[str]
    https_listener: aws.lb.Listener

    def __init__(self, args: EdgeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("chat:infra:Edge", args.name, None, opts)
        self._args = args
        child = pulumi.ResourceOptions(parent=self)
        zone = aws.route53.get_zone_output(
            name=args.hosted_zone_name,
            private_zone=False,
            opts=pulumi.InvokeOutputOptions(parent=self),
        )
        certificate_arn = args.certificate_arn or self._certificate(zone.zone_id)
        s = args.settings
        capacity = (
            aws.lb.LoadBalancerMinimumLoadBalancerCapacityArgs(capacity_units=s.capacity_units)
            if s.capacity_units
            else None
        )
        alb = aws.lb.LoadBalancer(
            f"{args.name}-alb",
            load_balancer_type="application",
            internal=False,
            security_groups=[args.security_group_id],
            subnets=list(args.public_subnet_ids),
            idle_timeout=s.idle_timeout_s,
            drop_invalid_header_fields=True,
            enable_http2=True,
            minimum_load_balancer_capacity=capacity,
            opts=child,
        )
        target_group = aws.lb.TargetGroup(
            f"{args.name}-gateway",
            port=ports.GATEWAY,
            protocol="HTTP",
            target_type="ip",
            vpc_id=args.vpc_id,
            deregistration_delay=s.deregistration_delay_s,
            health_check=aws.lb.TargetGroupHealthCheckArgs(
                path=HEALTH_PATH,
                matcher="200",
                interval=10,
                timeout=5,
                healthy_threshold=2,
                unhealthy_threshold=3,
            ),
            stickiness=aws.lb.TargetGroupStickinessArgs(
                type="lb_cookie", enabled=True, cookie_duration=s.stickiness_s
            ),
            opts=child,
        )
        aws.lb.Listener(
            f"{args.name}-http",
            load_balancer_arn=alb.arn,
            port=ports.HTTP,
            protocol="HTTP",
            default_actions=[
                aws.lb.ListenerDefaultActionArgs(
                    type="redirect",
                    redirect=aws.lb.ListenerDefaultActionRedirectArgs(
                        port=str(ports.HTTPS), protocol="HTTPS", status_code="HTTP_301"
                    ),
                )
            ],
            opts=child,
        )
        self.https_listener = aws.lb.Listener(
            f"{args.name}-https",
            load_balancer_arn=alb.arn,
            port=ports.HTTPS,
            protocol="HTTPS",
            ssl_policy=s.ssl_policy,
            certificate_arn=certificate_arn,
            default_actions=[
                aws.lb.ListenerDefaultActionArgs(type="forward", target_group_arn=target_group.arn)
            ],
            opts=child,
        )
        aws.route53.Record(
            f"{args.name}-alias",
            zone_id=zone.zone_id,
            name=args.domain_name,
            type="A",
            aliases=[
                aws.route53.RecordAliasArgs(
                    name=alb.dns_name, zone_id=alb.zone_id, evaluate_target_health=True
                )
            ],
            opts=child,
        )
        self.url = pulumi.Output.from_input(f"https://{args.domain_name}")
        self.alb_arn_suffix = alb.arn_suffix
        self.target_group_arn = target_group.arn
        self.target_group_arn_suffix = target_group.arn_suffix
        self.register_outputs({"url": self.url, "alb_dns_name": alb.dns_name})

    def _certificate(self, zone_id: pulumi.Output[str]) -> pulumi.Output[str]:
        """Issue a certificate for the domain and validate it through the zone."""
        name = self._args.name
        child = pulumi.ResourceOptions(parent=self)
        certificate = aws.acm.Certificate(
            f"{name}-cert", domain_name=self._args.domain_name, validation_method="DNS", opts=child
        )
        # One domain, so one validation record; reading its fields is a value, not a resource.
        option = certificate.domain_validation_options[0]
        record = aws.route53.Record(
            f"{name}-cert-validation",
            zone_id=zone_id,
            name=option.resource_record_name,
            type=option.resource_record_type,
            records=[option.resource_record_value],
            ttl=60,
            allow_overwrite=True,
            opts=child,
        )
        validation = aws.acm.CertificateValidation(
            f"{name}-cert",
            certificate_arn=certificate.arn,
            validation_record_fqdns=[record.fqdn],
            opts=child,
        )
        return validation.certificate_arn
