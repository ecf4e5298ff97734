"""Network tier: a VPC over N availability zones, and every security group.

Public subnets hold only the ALB and the NAT gateways; tasks and data stores live in
private subnets. All reachability is decided here, in one file, by security-group
references, never by CIDR, except the ALB's public listeners:

    internet --80,443--> alb --8080--> gateway
    worker, priority --5560 (ZeroMQ fan-out)--> gateway
    gateway, worker, priority --6379--> redis, --27017--> documentdb, --3306--> mysql
    loadtest --27017--> documentdb   (the verifier reads what was persisted)

Tasks may open any outbound connection (AWS APIs via NAT, the ALB for the load
generator); data stores have no egress rule at all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import ports
from infra.settings import IMAGES, NetworkSettings

#: Data stores and the port each one listens on.
DATA_STORES = {"redis": ports.REDIS, "documentdb": ports.MONGO, "mysql": ports.MYSQL}
#: Which tasks may reach which data store.
DATA_CLIENTS = {
    "redis": ("gateway", "worker", "priority"),
    "documentdb": ("gateway", "worker", "priority", "loadtest"),
    "mysql": ("gateway", "worker", "priority"),
}
ANYWHERE_V4 = "0.0.0.0/0"


@dataclass(frozen=True)
class NetworkArgs:
    """Inputs of the network tier."""

    name: str
    region: str
    settings: NetworkSettings
    #: Names of the zones to use, already cut to ``settings.az_count``.
    availability_zones: Sequence[str]


def subnet_cidrs(vpc_cidr: str, az_count: int) -> tuple[list[str], list[str]]:
    """(private, public) CIDRs: a 1/8 of the VPC per private subnet, small public ones.

    Private subnets are large because every Fargate task takes one address (300 tasks
    plus a deployment's surge of as many again); public subnets hold only ALB and NAT
    interfaces.
    """
    vpc = ipaddress.IPv4Network(vpc_cidr)
    eighths = list(vpc.subnets(prefixlen_diff=3))
    private = [str(net) for net in eighths[:az_count]]
    public = [str(net) for net in list(eighths[-1].subnets(prefixlen_diff=3))[:az_count]]
    return private, public


class Network(pulumi.ComponentResource):
    """VPC, subnets, NAT, routes and security groups."""

    vpc_id: pulumi.Output[str]
    public_subnet_ids: list[pulumi.Output[str]]
    private_subnet_ids: list[pulumi.Output[str]]
    alb_security_group_id: pulumi.Output[str]
    #: One per task family (gateway, worker, priority, loadtest).
    task_security_group_ids: dict[str, pulumi.Output[str]]
    #: One per data store (redis, documentdb, mysql).
    data_security_group_ids: dict[str, pulumi.Output[str]]

    def __init__(self, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("chat:infra:Network", args.name, None, opts)
        self._args = args
        child = pulumi.ResourceOptions(parent=self)
        vpc = aws.ec2.Vpc(
            f"{args.name}-vpc",
            cidr_block=args.settings.vpc_cidr,
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags={"Name": args.name},
            opts=child,
        )
        self.vpc_id = vpc.id
        self._subnets(vpc)
        self._security_groups(vpc)
        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "public_subnet_ids": self.public_subnet_ids,
                "private_subnet_ids": self.private_subnet_ids,
            }
        )

    def _subnets(self, vpc: aws.ec2.Vpc) -> None:
        args = self._args
        child = pulumi.ResourceOptions(parent=self)
        private_cidrs, public_cidrs = subnet_cidrs(
            args.settings.vpc_cidr, len(args.availability_zones)
        )
        igw = aws.ec2.InternetGateway(f"{args.name}-igw", vpc_id=vpc.id, opts=child)
        public_rt = aws.ec2.RouteTable(f"{args.name}-public", vpc_id=vpc.id, opts=child)
        aws.ec2.Route(
            f"{args.name}-public-default",
            route_table_id=public_rt.id,
            destination_cidr_block=ANYWHERE_V4,
            gateway_id=igw.id,
            opts=child,
        )
        self.public_subnet_ids, self.private_subnet_ids = [], []
        private_rts: list[aws.ec2.RouteTable] = []
        for i, zone in enumerate(args.availability_zones):
            public = aws.ec2.Subnet(
                f"{args.name}-public-{i}",
                vpc_id=vpc.id,
                cidr_block=public_cidrs[i],
                availability_zone=zone,
                map_public_ip_on_launch=False,
                tags={"Name": f"{args.name}-public-{zone}", "tier": "public"},
                opts=child,
            )
            aws.ec2.RouteTableAssociation(
                f"{args.name}-public-{i}",
                subnet_id=public.id,
                route_table_id=public_rt.id,
                opts=child,
            )
            private = aws.ec2.Subnet(
                f"{args.name}-private-{i}",
                vpc_id=vpc.id,
                cidr_block=private_cidrs[i],
                availability_zone=zone,
                map_public_ip_on_launch=False,
                tags={"Name": f"{args.name}-private-{zone}", "tier": "private"},
                opts=child,
            )
            rt = aws.ec2.RouteTable(f"{args.name}-private-{i}", vpc_id=vpc.id, opts=child)
            aws.ec2.RouteTableAssociation(
                f"{args.name}-private-{i}", subnet_id=private.id, route_table_id=rt.id, opts=child
            )
            self.public_subnet_ids.append(public.id)
            self.private_subnet_ids.append(private.id)
            private_rts.append(rt)
        self._nat(public_ids=self.public_subnet_ids, private_rts=private_rts, depends=[igw])
        # Free gateway endpoint: attachment and ECR layer traffic skips the NAT charge.
        aws.ec2.VpcEndpoint(
            f"{args.name}-s3",
            vpc_id=vpc.id,
            service_name=f"com.amazonaws.{args.region}.s3",
            vpc_endpoint_type="Gateway",
            route_table_ids=[rt.id for rt in private_rts],
            opts=child,
        )

    def _nat(
        self,
        public_ids: list[pulumi.Output[str]],
        private_rts: list[aws.ec2.RouteTable],
        depends: list[pulumi.Resource],
    ) -> None:
        name = self._args.name
        nats: list[aws.ec2.NatGateway] = []
        for i in range(self._args.settings.nat_gateways):
            eip = aws.ec2.Eip(
                f"{name}-nat-{i}", domain="vpc", opts=pulumi.ResourceOptions(parent=self)
            )
            nats.append(
                aws.ec2.NatGateway(
                    f"{name}-nat-{i}",
                    allocation_id=eip.id,
                    subnet_id=public_ids[i],
                    opts=pulumi.ResourceOptions(parent=self, depends_on=depends),
                )
            )
        for i, rt in enumerate(private_rts):
            aws.ec2.Route(
                f"{name}-private-default-{i}",
                route_table_id=rt.id,
                destination_cidr_block=ANYWHERE_V4,
                nat_gateway_id=nats[i % len(nats)].id,
                opts=pulumi.ResourceOptions(parent=self),
            )

    def _group(self, key: str, description: str, vpc: aws.ec2.Vpc) -> aws.ec2.SecurityGroup:
        return aws.ec2.SecurityGroup(
            f"{self._args.name}-{key}",
            vpc_id=vpc.id,
            description=description,
            revoke_rules_on_delete=True,
            tags={"Name": f"{self._args.name}-{key}"},
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _allow(
        self, name: str, group: aws.ec2.SecurityGroup, port: int, source: aws.ec2.SecurityGroup
    ) -> None:
        aws.vpc.SecurityGroupIngressRule(
            f"{self._args.name}-{name}",
            security_group_id=group.id,
            referenced_security_group_id=source.id,
            ip_protocol="tcp",
            from_port=port,
            to_port=port,
            description=name,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _security_groups(self, vpc: aws.ec2.Vpc) -> None:
        name = self._args.name
        child = pulumi.ResourceOptions(parent=self)
        alb = self._group("alb", "ALB: HTTP/HTTPS from the internet", vpc)
        tasks = {svc: self._group(svc, f"{svc} tasks", vpc) for svc in IMAGES}
        stores = {store: self._group(store, f"{store}: tasks only", vpc) for store in DATA_STORES}
        for port in (ports.HTTPS, ports.HTTP):
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-alb-in-{port}",
                security_group_id=alb.id,
                cidr_ipv4=ANYWHERE_V4,
                ip_protocol="tcp",
                from_port=port,
                to_port=port,
                description=f"public {port}",
                opts=child,
            )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-alb-out-gateway",
            security_group_id=alb.id,
            referenced_security_group_id=tasks["gateway"].id,
            ip_protocol="tcp",
            from_port=ports.GATEWAY,
            to_port=ports.GATEWAY,
            description="alb to gateways",
            opts=child,
        )
        self._allow("alb-to-gateway", tasks["gateway"], ports.GATEWAY, alb)
        for publisher in ("worker", "priority"):
            self._allow(
                f"{publisher}-to-gateway-fanout", tasks["gateway"], ports.FANOUT, tasks[publisher]
            )
        for store, port in DATA_STORES.items():
            for client in DATA_CLIENTS[store]:
                self._allow(f"{client}-to-{store}", stores[store], port, tasks[client])
        for svc, group in tasks.items():
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-{svc}-out",
                security_group_id=group.id,
                cidr_ipv4=ANYWHERE_V4,
                ip_protocol="-1",
                description="tasks call AWS APIs, the ALB and the data stores",
                opts=child,
            )
        self.alb_security_group_id = alb.id
        self.task_security_group_ids = {svc: g.id for svc, g in tasks.items()}
        self.data_security_group_ids = {store: g.id for store, g in stores.items()}
