"""Users, chats and members in SQL (MySQL/RDS in AWS and CI, SQLite embedded locally).

SQLAlchemy Core on an async engine (aiomysql, which is PyMySQL underneath, or aiosqlite).
The schema is owned by the alembic migrations in ``migrations/``; :data:`metadata` mirrors
it for queries and for alembic's autogenerate check. If you add a column: write a
migration (``make migration MSG=…``), add it here, and to the code that reads the row.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from chat.errors import Conflict

UserKind = Literal["human", "bot", "loadtest"]
USER_KINDS: tuple[UserKind, ...] = ("human", "bot", "loadtest")

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False, server_default="human"),
    sa.Column("created_at", sa.DateTime(), nullable=False),
)

chats = sa.Table(
    "chats",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("title", sa.String(200), nullable=False, server_default=""),
    sa.Column("created_by", sa.BigInteger(), sa.ForeignKey("users.id"), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
)

chat_members = sa.Table(
    "chat_members",
    metadata,
    sa.Column("chat_id", sa.BigInteger(), sa.ForeignKey("chats.id"), primary_key=True),
    sa.Column("user_id", sa.BigInteger(), sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("joined_at", sa.DateTime(), nullable=False),
    sa.Index("ix_chat_members_user", "user_id"),
)


@dataclass(frozen=True, slots=True)
class User:
    id: int
    email: str
    name: str
    kind: UserKind
    password_hash: str


@dataclass(frozen=True, slots=True)
class Chat:
    id: int
    title: str
    member_ids: list[int]


def tls_connect_args(url: sa.URL) -> tuple[sa.URL, dict[str, Any]]:
    """Turn ``?ssl_ca=<file>`` into the verified ``ssl.SSLContext`` the MySQL drivers take.

    RDS refuses plain connections (infra sets ``require_secure_transport``); aiomysql wants
    an SSLContext, not the file name, so the query option is lifted out of the URL here,
    for the async engine and the migration engine alike.
    """
    ca = url.query.get("ssl_ca")
    if url.get_backend_name() != "mysql" or not ca:
        return url, {}
    cafile = ca if isinstance(ca, str) else ca[0]
    context = ssl.create_default_context(cafile=cafile)
    return url.difference_update_query(["ssl_ca"]), {"ssl": context}


def create_engine(url: str, **options: Any) -> AsyncEngine:
    """An async engine; SQLite gets its parent directory created, MySQL a TLS context."""
    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "sqlite" and sa_url.database not in (None, "", ":memory:"):
        Path(sa_url.database or "").parent.mkdir(parents=True, exist_ok=True)
    else:
        options.setdefault("pool_size", 10)
        options.setdefault("max_overflow", 20)
        options.setdefault("pool_recycle", 1800)
    sa_url, connect_args = tls_connect_args(sa_url)
    if connect_args:
        options["connect_args"] = {**connect_args, **options.get("connect_args", {})}
    options.setdefault("pool_pre_ping", True)
    return create_async_engine(sa_url, **options)


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Directory:
    """Accounts, chats and membership: the SQL half of the data model."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def create_user(
        self, *, email: str, password_hash: str, name: str, kind: UserKind
    ) -> int:
        """Insert a user; :class:`Conflict` if the e-mail is taken."""
        try:
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    users.insert().values(
                        email=email.lower(),
                        password_hash=password_hash,
                        name=name,
                        kind=kind,
                        created_at=_utcnow(),
                    )
                )
                return int(result.inserted_primary_key[0])  # type: ignore[index]
        except IntegrityError as e:
            raise Conflict("email already registered") from e

    async def create_users(
        self, accounts: Sequence[tuple[str, str]], *, password_hash: str, kind: UserKind
    ) -> list[int]:
        """Insert ``(email, name)`` accounts in one transaction (load-test provisioning);
        returns their ids in order. :class:`Conflict`, and nothing inserted, if an e-mail
        is taken or repeated."""
        now = _utcnow()
        ids: list[int] = []
        try:
            async with self.engine.begin() as conn:
                for email, name in accounts:
                    result = await conn.execute(
                        users.insert().values(
                            email=email.lower(),
                            password_hash=password_hash,
                            name=name,
                            kind=kind,
                            created_at=now,
                        )
                    )
                    ids.append(int(result.inserted_primary_key[0]))  # type: ignore[index]
        except IntegrityError as e:
            raise Conflict("an email is already registered") from e
        return ids

    async def user_by_email(self, email: str) -> User | None:
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(sa.select(users).where(users.c.email == email.lower()))
            ).first()
        return _user(row) if row else None

    async def users_by_id(self, ids: Iterable[int]) -> dict[int, User]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(users).where(users.c.id.in_(wanted)))).all()
        return {r.id: _user(r) for r in rows}

    async def create_chat(self, *, title: str, creator_id: int, member_ids: Sequence[int]) -> int:
        """Create a chat with the creator and ``member_ids`` (unknown users: Conflict)."""
        members = sorted({creator_id, *member_ids})
        now = _utcnow()
        try:
            async with self.engine.begin() as conn:
                found = (
                    await conn.execute(sa.select(sa.func.count()).where(users.c.id.in_(members)))
                ).scalar_one()
                if found != len(members):
                    raise Conflict("some member_ids are not users")
                result = await conn.execute(
                    chats.insert().values(title=title, created_by=creator_id, created_at=now)
                )
                chat_id = int(result.inserted_primary_key[0])  # type: ignore[index]
                await conn.execute(
                    chat_members.insert(),
                    [{"chat_id": chat_id, "user_id": u, "joined_at": now} for u in members],
                )
                return chat_id
        except IntegrityError as e:
            raise Conflict("could not create chat") from e

    async def add_members(self, chat_id: int, user_ids: Sequence[int]) -> list[int]:
        """Add members (idempotent); returns the full member list."""
        now = _utcnow()
        async with self.engine.begin() as conn:
            existing = set(
                (
                    await conn.execute(
                        sa.select(chat_members.c.user_id).where(chat_members.c.chat_id == chat_id)
                    )
                ).scalars()
            )
            new = sorted(set(user_ids) - existing)
            if new:
                found = (
                    await conn.execute(sa.select(sa.func.count()).where(users.c.id.in_(new)))
                ).scalar_one()
                if found != len(new):
                    raise Conflict("some user ids are not users")
                await conn.execute(
                    chat_members.insert(),
                    [{"chat_id": chat_id, "user_id": u, "joined_at": now} for u in new],
                )
        return sorted(existing | set(new))

    async def chat(self, chat_id: int) -> Chat | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(chats).where(chats.c.id == chat_id))).first()
            if row is None:
                return None
            members = (
                await conn.execute(
                    sa.select(chat_members.c.user_id)
                    .where(chat_members.c.chat_id == chat_id)
                    .order_by(chat_members.c.user_id)
                )
            ).scalars()
            return Chat(id=row.id, title=row.title, member_ids=list(members))

    async def member_ids(self, chat_id: int) -> set[int]:
        async with self.engine.connect() as conn:
            rows = await conn.execute(
                sa.select(chat_members.c.user_id).where(chat_members.c.chat_id == chat_id)
            )
            return set(rows.scalars())

    async def chats_of(self, user_id: int) -> list[Chat]:
        """The user's chats with their members, ordered by chat id."""
        async with self.engine.connect() as conn:
            mine = sa.select(chat_members.c.chat_id).where(chat_members.c.user_id == user_id)
            rows = (
                await conn.execute(
                    sa.select(chats.c.id, chats.c.title, chat_members.c.user_id)
                    .join(chat_members, chat_members.c.chat_id == chats.c.id)
                    .where(chats.c.id.in_(mine))
                    .order_by(chats.c.id, chat_members.c.user_id)
                )
            ).all()
        result: dict[int, Chat] = {}
        for chat_id, title, member in rows:
            result.setdefault(chat_id, Chat(id=chat_id, title=title, member_ids=[]))
            result[chat_id].member_ids.append(member)
        return list(result.values())


def _user(row: Any) -> User:
    return User(
        id=row.id,
        email=row.email,
        name=row.name,
        kind=row.kind,
        password_hash=row.password_hash,
    )


# --------------------------------------------------------------------------- migrations

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: MySQL named lock: gateways booting together run the migrations one at a time.
MIGRATION_LOCK = "chat_platform_migrations"


def sync_url(url: str) -> str:
    """The blocking-driver URL alembic runs with (aiomysql -> pymysql, aiosqlite -> sqlite)."""
    sa_url = sa.make_url(url)
    driver = {"aiomysql": "pymysql", "asyncmy": "pymysql", "aiosqlite": "pysqlite"}.get(
        sa_url.get_driver_name(), sa_url.get_driver_name()
    )
    return sa_url.set(drivername=f"{sa_url.get_backend_name()}+{driver}").render_as_string(
        hide_password=False
    )


def migrate(url: str, revision: str = "head") -> None:
    """``alembic upgrade <revision>``; serialised by a MySQL named lock when on MySQL."""
    from alembic import command
    from alembic.config import Config

    sa_url = sa.make_url(url)
    if sa_url.get_backend_name() == "sqlite" and sa_url.database not in (None, "", ":memory:"):
        Path(sa_url.database or "").parent.mkdir(parents=True, exist_ok=True)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    plain_url, connect_args = tls_connect_args(sa.make_url(sync_url(url)))
    engine = sa.create_engine(plain_url, poolclass=sa.NullPool, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            is_mysql = engine.dialect.name in ("mysql", "mariadb")
            if is_mysql:
                conn.execute(sa.text("SELECT GET_LOCK(:n, 60)"), {"n": MIGRATION_LOCK})
            try:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                conn.commit()
            finally:
                if is_mysql:
                    conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": MIGRATION_LOCK})
    finally:
        engine.dispose()


async def migrate_async(url: str) -> None:
    """:func:`migrate` off the event loop."""
    await asyncio.to_thread(migrate, url)
