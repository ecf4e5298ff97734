"""Data tier: the stream store (Redis), message store (DocumentDB), user store (MySQL),
attachment bucket, and every generated credential.

Each store is encrypted at rest with the stack's KMS key and accepts only TLS. Each
password is generated here (``random.RandomPassword``, a Pulumi secret), assembled into
the service URL the settings expect and stored in Secrets Manager; ECS injects it as a
container secret. No credential ever appears in a plain environment value or an output.

Options that change the topology, not just sizes:

- ``redis.backend``: ``elasticache`` (cluster mode, the default) or ``memorydb``
  (multi-AZ transaction log: an acknowledged enqueue survives a node loss).
- ``documentdb.mode``: ``instance`` (one writer) or ``elastic`` (sharded on
  ``chat_id``; the way past one writer's insert rate).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypedDict

import pulumi
import pulumi_aws as aws
import pulumi_random as random

from infra import ports
from infra.settings import DocumentDbSettings, MysqlSettings, RedisSettings

#: The image's CA bundle: the system roots plus the RDS/DocumentDB CAs (see the base
#: Dockerfile). pymongo and the SQL engine verify the servers against it.
CA_BUNDLE = "/etc/ssl/certs/chat-ca-bundle.pem"
DB_USER = "chat"
SQL_DATABASE = "chat"


class _MysqlCommon(TypedDict):
    engine: str
    parameter_group_name: pulumi.Input[str]
    vpc_security_group_ids: list[pulumi.Input[str]]
    publicly_accessible: bool
    storage_encrypted: bool
    kms_key_id: pulumi.Input[str]
    auto_minor_version_upgrade: bool
    apply_immediately: bool


@dataclass(frozen=True)
class DataArgs:
    """Inputs of the data tier."""

    name: str
    redis: RedisSettings
    documentdb: DocumentDbSettings
    mysql: MysqlSettings
    private_subnet_ids: Sequence[pulumi.Input[str]]
    #: Security group per store: ``redis``, ``documentdb``, ``mysql``.
    security_group_ids: dict[str, pulumi.Input[str]]
    #: Browsers upload attachments straight to S3 from this origin (presigned PUT).
    web_origin: str
    #: Deletion protection, final snapshots and a bucket that outlives the stack.
    protect: bool


class Data(pulumi.ComponentResource):
    """KMS key, Redis, DocumentDB, MySQL, S3 and the secrets holding their URLs."""

    kms_key_arn: pulumi.Output[str]
    bucket_name: pulumi.Output[str]
    bucket_arn: pulumi.Output[str]
    #: Environment variable name -> Secrets Manager ARN (``catalog.SECRET_ENV``).
    secret_arns: dict[str, pulumi.Output[str]]
    #: Identifiers the dashboard and alarms use.
    redis_id: pulumi.Output[str]
    documentdb_id: pulumi.Output[str]
    mysql_ids: list[pulumi.Output[str]]

    def __init__(self, args: DataArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("chat:infra:Data", args.name, None, opts)
        self._args = args
        key = aws.kms.Key(
            f"{args.name}-data",
            description=f"{args.name}: data stores, secrets and attachments",
            enable_key_rotation=True,
            deletion_window_in_days=30 if args.protect else 7,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self._key = key
        self.kms_key_arn = key.arn
        self.secret_arns = {}
        self._redis()
        self._documentdb()
        self._mysql()
        self._bucket()
        jwt = self._password("jwt", length=64)
        self.secret_arns["JWT_SECRET"] = self._secret("JWT_SECRET", jwt)
        self.register_outputs({"bucket_name": self.bucket_name, "secret_arns": self.secret_arns})

    # --- credentials -------------------------------------------------------------------

    def _password(self, what: str, length: int = 40) -> pulumi.Output[str]:
        # Alphanumeric only: every store's password rules and URL syntax accept it as is.
        return random.RandomPassword(
            f"{self._args.name}-{what}",
            length=length,
            special=False,
            opts=pulumi.ResourceOptions(parent=self),
        ).result

    def _secret(self, env: str, value: pulumi.Input[str]) -> pulumi.Output[str]:
        """Store ``value`` in Secrets Manager; return the secret's ARN."""
        slug = env.lower().replace("_", "-")
        secret = aws.secretsmanager.Secret(
            f"{self._args.name}-{slug}",
            description=f"{env} of the chat services",
            kms_key_id=self._key.arn,
            recovery_window_in_days=30 if self._args.protect else 0,
            opts=pulumi.ResourceOptions(parent=self),
        )
        aws.secretsmanager.SecretVersion(
            f"{self._args.name}-{slug}",
            secret_id=secret.id,
            secret_string=pulumi.Output.secret(value),
            opts=pulumi.ResourceOptions(parent=self),
        )
        return secret.arn

    # --- Redis -------------------------------------------------------------------------

    def _redis(self) -> None:
        s = self._args.redis
        if s.backend == "memorydb":
            self._memorydb()
            return
        name = self._args.name
        child = pulumi.ResourceOptions(parent=self)
        token = self._password("redis-auth")
        subnets = aws.elasticache.SubnetGroup(
            f"{name}-redis", subnet_ids=list(self._args.private_subnet_ids), opts=child
        )
        major = s.engine_version.split(".")[0]
        group = aws.elasticache.ReplicationGroup(
            f"{name}-redis",
            description=f"{name} streams (cluster mode)",
            engine="redis",
            engine_version=s.engine_version,
            parameter_group_name=f"default.redis{major}.cluster.on",
            node_type=s.node_type,
            cluster_mode="enabled",
            num_node_groups=s.shards,
            replicas_per_node_group=s.replicas_per_shard,
            automatic_failover_enabled=True,
            multi_az_enabled=s.replicas_per_shard > 0,
            port=ports.REDIS,
            subnet_group_name=subnets.name,
            security_group_ids=[self._args.security_group_ids["redis"]],
            at_rest_encryption_enabled=True,
            kms_key_id=self._key.arn,
            transit_encryption_enabled=True,
            auth_token=token,
            snapshot_retention_limit=s.snapshot_retention_days,
            apply_immediately=True,
            opts=child,
        )
        url = pulumi.Output.format(
            "rediss://:{0}@{1}:{2}/0", token, group.configuration_endpoint_address, ports.REDIS
        )
        self.secret_arns["REDIS_URL"] = self._secret("REDIS_URL", url)
        self.redis_id = group.id

    def _memorydb(self) -> None:
        s = self._args.redis
        name = self._args.name
        child = pulumi.ResourceOptions(parent=self)
        password = self._password("redis-auth")
        user = aws.memorydb.User(
            f"{name}-redis",
            user_name=f"{name}-{DB_USER}",
            access_string="on ~* &* +@all -@dangerous",
            authentication_mode=aws.memorydb.UserAuthenticationModeArgs(
                type="password", passwords=[password]
            ),
            opts=child,
        )
        acl = aws.memorydb.Acl(f"{name}-redis", user_names=[user.user_name], opts=child)
        subnets = aws.memorydb.SubnetGroup(
            f"{name}-redis", subnet_ids=list(self._args.private_subnet_ids), opts=child
        )
        cluster = aws.memorydb.Cluster(
            f"{name}-redis",
            acl_name=acl.name,
            engine="redis",
            engine_version=s.engine_version,
            node_type=s.node_type,
            num_shards=s.shards,
            num_replicas_per_shard=s.replicas_per_shard,
            port=ports.REDIS,
            subnet_group_name=subnets.name,
            security_group_ids=[self._args.security_group_ids["redis"]],
            tls_enabled=True,
            kms_key_arn=self._key.arn,
            snapshot_retention_limit=s.snapshot_retention_days,
            opts=child,
        )
        url = pulumi.Output.format(
            "rediss://{0}:{1}@{2}:{3}/0",
            user.user_name,
            password,
            cluster.cluster_endpoints.apply(lambda endpoints: endpoints[0].address),
            ports.REDIS,
        )
        self.secret_arns["REDIS_URL"] = self._secret("REDIS_URL", url)
        self.redis_id = cluster.name

    # --- DocumentDB --------------------------------------------------------------------

    def _documentdb(self) -> None:
        s = self._args.documentdb
        name = self._args.name
        child = pulumi.ResourceOptions(parent=self)
        password = self._password("documentdb")
        sg = self._args.security_group_ids["documentdb"]
        if s.mode == "elastic":
            elastic = aws.docdb.ElasticCluster(
                f"{name}-docdb",
                admin_user_name=DB_USER,
                admin_user_password=password,
                auth_type="PLAIN_TEXT",
                shard_capacity=s.shard_capacity,
                shard_count=s.shard_count,
                shard_instance_count=s.shard_instance_count,
                subnet_ids=list(self._args.private_subnet_ids),
                vpc_security_group_ids=[sg],
                kms_key_id=self._key.arn,
                backup_retention_period=s.backup_retention_days,
                opts=child,
            )
            # Elastic clusters always require TLS and talk to mongos: no replicaSet.
            url = pulumi.Output.format(
                "mongodb://{0}:{1}@{2}:{3}/?tls=true&tlsCAFile={4}&retryWrites=false",
                DB_USER,
                password,
                elastic.endpoint,
                ports.MONGO,
                CA_BUNDLE,
            )
            self.documentdb_id = elastic.name
        else:
            cluster = self._documentdb_cluster(password, sg)
            url = pulumi.Output.format(
                "mongodb://{0}:{1}@{2}:{3}/?tls=true&tlsCAFile={4}&replicaSet=rs0"
                "&retryWrites=false",
                DB_USER,
                password,
                cluster.endpoint,
                ports.MONGO,
                CA_BUNDLE,
            )
            self.documentdb_id = cluster.cluster_identifier
        self.secret_arns["MONGO_URL"] = self._secret("MONGO_URL", url)

    def _documentdb_cluster(
        self, password: pulumi.Output[str], sg: pulumi.Input[str]
    ) -> aws.docdb.Cluster:
        s = self._args.documentdb
        name = self._args.name
        child = pulumi.ResourceOptions(parent=self)
        family = "docdb" + ".".join(s.engine_version.split(".")[:2])
        params = aws.docdb.ClusterParameterGroup(
            f"{name}-docdb",
            family=family,
            parameters=[aws.docdb.ClusterParameterGroupParameterArgs(name="tls", value="enabled")],
            opts=child,
        )
        subnets = aws.docdb.SubnetGroup(
            f"{name}-docdb", subnet_ids=list(self._args.private_subnet_ids), opts=child
        )
        cluster = aws.docdb.Cluster(
            f"{name}-docdb",
            engine="docdb",
            engine_version=s.engine_version,
            master_username=DB_USER,
            master_password=password,
            db_subnet_group_name=subnets.name,
            db_cluster_parameter_group_name=params.name,
            vpc_security_group_ids=[sg],
            storage_encrypted=True,
            storage_type=s.storage_type,
            kms_key_id=self._key.arn,
            backup_retention_period=s.backup_retention_days,
            deletion_protection=self._args.protect,
            skip_final_snapshot=not self._args.protect,
            final_snapshot_identifier=f"{name}-docdb-final" if self._args.protect else None,
            apply_immediately=True,
            opts=child,
        )
        for i in range(s.instances):
            aws.docdb.ClusterInstance(
                f"{name}-docdb-{i}",
                cluster_identifier=cluster.id,
                instance_class=s.instance_class,
                apply_immediately=True,
                opts=child,
            )
        return cluster

    # --- MySQL -------------------------------------------------------------------------

    def _mysql(self) -> None:
        s = self._args.mysql
        name = self._args.name
        child = pulumi.ResourceOptions(parent=self)
        password = self._password("mysql")
        parameters = [
            aws.rds.ParameterGroupParameterArgs(name="require_secure_transport", value="1")
        ]
        if s.max_connections:
            parameters.append(
                aws.rds.ParameterGroupParameterArgs(
                    name="max_connections", value=str(s.max_connections)
                )
            )
        params = aws.rds.ParameterGroup(
            f"{name}-mysql", family=f"mysql{s.engine_version}", parameters=parameters, opts=child
        )
        subnets = aws.rds.SubnetGroup(
            f"{name}-mysql", subnet_ids=list(self._args.private_subnet_ids), opts=child
        )
        primary = aws.rds.Instance(
            f"{name}-mysql",
            engine_version=s.engine_version,
            instance_class=s.instance_class,
            allocated_storage=s.allocated_storage_gb,
            max_allocated_storage=s.max_allocated_storage_gb,
            storage_type="gp3",
            db_name=SQL_DATABASE,
            username=DB_USER,
            password=password,
            db_subnet_group_name=subnets.name,
            multi_az=s.multi_az,
            backup_retention_period=s.backup_retention_days,
            deletion_protection=self._args.protect,
            skip_final_snapshot=not self._args.protect,
            final_snapshot_identifier=f"{name}-mysql-final" if self._args.protect else None,
            copy_tags_to_snapshot=True,
            **self._mysql_common(params.name),
            opts=child,
        )
        self.mysql_ids = [primary.identifier]
        for i in range(s.read_replicas):
            replica = aws.rds.Instance(
                f"{name}-mysql-replica-{i}",
                replicate_source_db=primary.identifier,
                instance_class=s.replica_instance_class or s.instance_class,
                skip_final_snapshot=True,
                **self._mysql_common(params.name),
                opts=child,
            )
            self.mysql_ids.append(replica.identifier)
        # aiomysql gets an SSLContext from ssl_ca (the SQL engine builds it, see
        # docs/deploy.md); require_secure_transport refuses plaintext anyway.
        url = pulumi.Output.format(
            "mysql+aiomysql://{0}:{1}@{2}:{3}/{4}?ssl_ca={5}",
            DB_USER,
            password,
            primary.address,
            ports.MYSQL,
            SQL_DATABASE,
            CA_BUNDLE,
        )
        self.secret_arns["SQL_URL"] = self._secret("SQL_URL", url)

    def _mysql_common(self, parameter_group: pulumi.Output[str]) -> _MysqlCommon:
        """What the primary and every replica share: privacy, encryption, parameters."""
        return {
            "engine": "mysql",
            "parameter_group_name": parameter_group,
            "vpc_security_group_ids": [self._args.security_group_ids["mysql"]],
            "publicly_accessible": False,
            "storage_encrypted": True,
            "kms_key_id": self._key.arn,
            "auto_minor_version_upgrade": True,
            "apply_immediately": True,
        }

    # --- S3 ----------------------------------------------------------------------------

    def _bucket(self) -> None:
        name = self._args.name
        child = pulumi.ResourceOptions(parent=self)
        bucket = aws.s3.Bucket(
            f"{name}-attachments",
            force_destroy=not self._args.protect,
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=self._args.protect),
        )
        aws.s3.BucketPublicAccessBlock(
            f"{name}-attachments",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketOwnershipControls(
            f"{name}-attachments",
            bucket=bucket.id,
            rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
            opts=child,
        )
        sse = (
            aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-attachments",
            bucket=bucket.id,
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=sse(
                        sse_algorithm="aws:kms", kms_master_key_id=self._key.arn
                    ),
                    bucket_key_enabled=True,
                )
            ],
            opts=child,
        )
        aws.s3.BucketPolicy(
            f"{name}-attachments",
            bucket=bucket.id,
            policy=bucket.arn.apply(_tls_only_policy),
            opts=child,
        )
        aws.s3.BucketCorsConfiguration(
            f"{name}-attachments",
            bucket=bucket.id,
            cors_rules=[
                aws.s3.BucketCorsConfigurationCorsRuleArgs(
                    allowed_methods=["PUT", "GET"],
                    allowed_origins=[self._args.web_origin],
                    allowed_headers=["content-type"],
                    max_age_seconds=3600,
                )
            ],
            opts=child,
        )
        self.bucket_name = bucket.bucket
        self.bucket_arn = bucket.arn


def _tls_only_policy(bucket_arn: str) -> str:
    """Refuse any request to the bucket that does not arrive over TLS."""
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [bucket_arn, f"{bucket_arn}/*"],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }
            ],
        }
    )
