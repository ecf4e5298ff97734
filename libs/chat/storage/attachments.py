"""Attachments: S3 objects (moto's server or a local directory when run locally).

The client asks the gateway for an upload slot (``POST /api/v1/attachments``), PUTs the
bytes to the presigned URL, then sends the message with the key. The worker looks up
each key's content type and size (HEAD, cached) when it persists the message, and the
gateway serves ``GET /api/v1/attachments/{key}`` as a redirect to a presigned GET.

Keys are ``<user_id>/<uuid7>``: the sender owns the prefix, so a message can only refer
to its sender's uploads (checked by the gateway).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError as BotoClientError

from chat.errors import BadRequest, NotFound
from chat.ids import new_message_id

#: Largest upload accepted (bytes); the presigned PUT is bound to the declared size.
MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
PRESIGN_TTL_S = 900
KEY_RE = re.compile(r"^[0-9]+/[0-9a-f-]{36}$")
CONTENT_TYPE_RE = re.compile(r"^[\w.+-]+/[\w.+-]+$")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    content_type: str
    size: int


@dataclass(frozen=True, slots=True)
class UploadSlot:
    key: str
    upload_url: str


def new_key(user_id: int) -> str:
    return f"{user_id}/{new_message_id()}"


def owner_of(key: str) -> int:
    """The user id that may attach ``key``; BadRequest if the key is malformed."""
    if not KEY_RE.match(key):
        raise BadRequest(f"malformed attachment key: {key!r}")
    return int(key.split("/", 1)[0])


def validate_upload(content_type: str, size: int) -> None:
    if not CONTENT_TYPE_RE.match(content_type):
        raise BadRequest("content_type must look like type/subtype")
    if not 0 < size <= MAX_ATTACHMENT_BYTES:
        raise BadRequest(f"size must be between 1 and {MAX_ATTACHMENT_BYTES} bytes")


class AttachmentStore(Protocol):
    async def create_upload(self, user_id: int, content_type: str, size: int) -> UploadSlot: ...

    async def info(self, key: str) -> ObjectInfo: ...

    async def download_url(self, key: str) -> str: ...


class S3Attachments:
    """Attachments in an S3 bucket (boto3 calls run in a thread; they block)."""

    def __init__(self, bucket: str, *, endpoint_url: str | None, region: str) -> None:
        self.bucket = bucket
        self._s3: Any = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=BotoConfig(signature_version="s3v4", retries={"max_attempts": 3}),
        )

    async def ensure_bucket(self) -> None:
        """Create the bucket if missing (local runs; in AWS Pulumi owns it)."""

        def create() -> None:
            try:
                self._s3.head_bucket(Bucket=self.bucket)
            except BotoClientError:
                self._s3.create_bucket(Bucket=self.bucket)

        await asyncio.to_thread(create)

    async def create_upload(self, user_id: int, content_type: str, size: int) -> UploadSlot:
        validate_upload(content_type, size)
        key = new_key(user_id)
        url = await asyncio.to_thread(
            self._s3.generate_presigned_url,
            "put_object",
            Params={
                "Bucket": self.bucket,
                "Key": key,
                "ContentType": content_type,
                "ContentLength": size,
            },
            ExpiresIn=PRESIGN_TTL_S,
        )
        return UploadSlot(key=key, upload_url=url)

    async def info(self, key: str) -> ObjectInfo:
        try:
            head = await asyncio.to_thread(self._s3.head_object, Bucket=self.bucket, Key=key)
        except BotoClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise NotFound(f"attachment {key} was not uploaded") from e
            raise
        return ObjectInfo(
            key=key,
            content_type=head.get("ContentType", "application/octet-stream"),
            size=int(head.get("ContentLength", 0)),
        )

    async def download_url(self, key: str) -> str:
        url: str = await asyncio.to_thread(
            self._s3.generate_presigned_url,
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=PRESIGN_TTL_S,
        )
        return url


class LocalAttachments:
    """Attachments in a directory, uploaded through the gateway itself (``make run``).

    Upload URLs are ``/api/v1/attachments/{key}/upload?sig=…``: an HMAC over the key,
    content type and size, so only the slot the gateway handed out can be written.
    """

    def __init__(self, root: Path, secret: str) -> None:
        self.root = root
        self._secret = secret.encode()
        root.mkdir(parents=True, exist_ok=True)

    def signature(self, key: str, content_type: str, size: int) -> str:
        msg = f"{key}\n{content_type}\n{size}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()

    def path(self, key: str) -> Path:
        owner_of(key)  # validates the shape: no traversal
        return self.root / key

    async def create_upload(self, user_id: int, content_type: str, size: int) -> UploadSlot:
        validate_upload(content_type, size)
        key = new_key(user_id)
        sig = self.signature(key, content_type, size)
        url = f"/api/v1/attachments/{key}/upload?content_type={content_type}&size={size}&sig={sig}"
        return UploadSlot(key=key, upload_url=url)

    def write(self, key: str, content_type: str, data: bytes) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.with_suffix(".type").write_text(content_type)

    async def info(self, key: str) -> ObjectInfo:
        # File I/O in a thread: the gateway's send path and the consumers call this on
        # their event loop, which a slow disk must not hold still.
        return await asyncio.to_thread(self._info, key)

    def _info(self, key: str) -> ObjectInfo:
        path = self.path(key)
        if not path.exists():
            raise NotFound(f"attachment {key} was not uploaded")
        type_file = path.with_suffix(".type")
        content_type = (
            type_file.read_text()
            if type_file.exists()
            else (mimetypes.guess_type(path.name)[0] or "application/octet-stream")
        )
        return ObjectInfo(key=key, content_type=content_type, size=path.stat().st_size)

    async def download_url(self, key: str) -> str:
        return f"/api/v1/attachments/{key}/content"


def from_settings(settings: Any) -> S3Attachments | LocalAttachments:
    """Local directory when S3_LOCAL_DIR is set, else S3 (moto server via S3_ENDPOINT_URL)."""
    if settings.s3_local_dir:
        return LocalAttachments(Path(settings.s3_local_dir), settings.effective_jwt_secret())
    return S3Attachments(
        settings.s3_bucket, endpoint_url=settings.s3_endpoint_url, region=settings.aws_region
    )
