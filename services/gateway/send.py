"""The send path shared by WebSocket ``send`` frames and ``POST …/messages``.

validate -> membership (cached) -> classify live|bulk -> batched enqueue -> ack.

The WebSocket hot path is synchronous up to the enqueue: :meth:`Sender.prepare` returns
the queued message when everything it needs is in memory (the member list is cached and
there are no attachments to look up), and :meth:`Sender.submit` hands it to the
:class:`~chat.streams.BatchingEnqueuer`, which coalesces every send of the event-loop
tick into one script call per partition. Only a cache miss or attachments take the
awaiting path (:meth:`Sender.prepare_slow`).
"""

from __future__ import annotations

from chat.errors import BadRequest, ClientError, Forbidden, TooLarge
from chat.ids import new_message_id
from chat.serialization import QueuedMessage
from chat.storage.attachments import AttachmentStore, owner_of
from chat.streams import Accepted, BatchingEnqueuer, Done
from gateway.auth import Principal
from gateway.limits import LiveBudget
from gateway.membership import Membership, check_member

#: UTF-8 uses at most 4 bytes per code point: shorter strings skip the encode.
_MAX_UTF8 = 4


class Sender:
    def __init__(
        self,
        enqueuer: BatchingEnqueuer,
        membership: Membership,
        budget: LiveBudget,
        attachments: AttachmentStore,
        *,
        max_text_bytes: int,
    ) -> None:
        self._enqueuer = enqueuer
        self._membership = membership
        self._budget = budget
        self._attachments = attachments
        self._max_text = max_text_bytes

    def _validate(
        self, who: Principal, text: str, attachments: list[str], client_id: str | None
    ) -> None:
        if len(text) * _MAX_UTF8 > self._max_text and len(text.encode()) > self._max_text:
            raise TooLarge(f"text is over {self._max_text} bytes", client_id=client_id)
        if not text and not attachments:
            raise BadRequest("empty message: send text or attachments", client_id=client_id)
        for key in attachments:
            if owner_of(key) != who.user_id:
                raise Forbidden(f"attachment {key} belongs to another user", client_id=client_id)

    def _queued(
        self,
        who: Principal,
        chat_id: int,
        text: str,
        attachments: list[str],
        client_id: str | None,
    ) -> QueuedMessage:
        return QueuedMessage(
            id=new_message_id(),
            chat_id=chat_id,
            sender_id=who.user_id,
            text=text,
            attachments=attachments,
            priority=self._budget.classify(who),
            client_id=client_id,
        )

    def prepare(
        self,
        who: Principal,
        chat_id: int,
        text: str,
        attachments: list[str],
        client_id: str | None,
    ) -> QueuedMessage | None:
        """The queued message, or None when the check needs I/O (use prepare_slow).
        Raises a ClientError for a message that must be refused."""
        if attachments:
            return None
        members = self._membership.cached(chat_id)
        if members is None:
            return None
        self._validate(who, text, attachments, client_id)
        try:
            check_member(members, chat_id, who.user_id)
        except (Forbidden, BadRequest) as e:
            e.client_id = client_id
            raise
        return self._queued(who, chat_id, text, attachments, client_id)

    async def prepare_slow(
        self,
        who: Principal,
        chat_id: int,
        text: str,
        attachments: list[str],
        client_id: str | None,
    ) -> QueuedMessage:
        self._validate(who, text, attachments, client_id)
        try:
            await self._membership.require_member(chat_id, who.user_id)
            for key in attachments:
                await self._attachments.info(key)  # NotFound until the upload happened
        except ClientError as e:  # not a member, attachment not uploaded: tag the reply
            e.client_id = client_id
            raise
        return self._queued(who, chat_id, text, attachments, client_id)

    def submit(self, message: QueuedMessage, done: Done) -> None:
        """Enqueue; ``done`` gets the :class:`Accepted` or :class:`Unavailable`."""
        self._enqueuer.submit_to(message, done)

    async def send(
        self,
        who: Principal,
        chat_id: int,
        text: str,
        attachments: list[str],
        client_id: str | None,
    ) -> Accepted:
        """The whole path, awaiting (HTTP)."""
        message = await self.prepare_slow(who, chat_id, text, attachments, client_id)
        return await self._enqueuer.submit(message)
