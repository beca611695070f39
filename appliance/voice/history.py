"""A bounded memory of the conversation, to re-create it on a new connection.

A Voice Live conversation lives in its connection: after a reconnect the model knows nothing.
The history keeps the recent turns as text (what the user said, from input transcription when
it is on; what the assistant said, from its audio transcript) and turns them into
conversation items for the new connection.

Order comes from the events that create the items (``input_audio_buffer.committed`` for the
user, ``response.output_item.added`` for the assistant); transcripts arrive later and fill
them in. An answer the user interrupted is cut to the share of its audio actually played,
so the model does not believe it said what nobody heard. Items the history itself re-created
are text items and never come back through those events, so they are not counted twice.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from azure.ai.voicelive.models import (
    AssistantMessageItem,
    ConversationRequestItem,
    InputTextContentPart,
    OutputTextContentPart,
    UserMessageItem,
)

Role = Literal["user", "assistant"]

MAX_TEXT_CHARS = 1000  # per message: a few spoken paragraphs
INTERRUPTED_MARK = "…"
_HEARD_SLACK_MS = 50.0  # a truncation this close to the end heard it all


@dataclass(slots=True)
class Message:
    role: Role
    text: str | None = None
    audio_ms: float = 0.0  # assistant audio received for this item
    heard_ms: float | None = None  # set when the answer was interrupted (truncated)

    def restored_text(self) -> str | None:
        """The text to re-create: cut to what was heard, bounded in length."""
        if not self.text:
            return None
        text = self.text.strip()
        if self.heard_ms is not None and self.heard_ms < self.audio_ms - _HEARD_SLACK_MS:
            # Words are spread evenly enough over the audio for a sentence-level cut.
            words = text.split()
            kept = round(len(words) * max(0.0, self.heard_ms / self.audio_ms))
            if kept == 0:
                return None
            text = " ".join(words[:kept]) + INTERRUPTED_MARK
        if len(text) > MAX_TEXT_CHARS:
            text = text[:MAX_TEXT_CHARS].rstrip() + INTERRUPTED_MARK
        return text or None


class ConversationHistory:
    """The last ``max_turns`` turns (one user message and one answer each) of a conversation."""

    def __init__(self, max_turns: int) -> None:
        if max_turns < 0:
            raise ValueError("max_turns must be >= 0")
        self.max_turns = max_turns
        self._messages: OrderedDict[str, Message] = OrderedDict()

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def max_messages(self) -> int:
        return 2 * self.max_turns

    def messages(self) -> list[tuple[str, Message]]:
        return list(self._messages.items())

    def user_item(self, item_id: str) -> None:
        """The user's audio was committed as this item (its transcript may follow)."""
        self._add(item_id, "user")

    def assistant_item(self, item_id: str) -> None:
        """The model started an answer as this item."""
        self._add(item_id, "assistant")

    def transcript(self, item_id: str, text: str, *, role: Role) -> None:
        """The full text of an item: the user's transcription or the answer's transcript."""
        message = self._messages.get(item_id)
        if message is None:
            # A transcript for an item the history never saw created (e.g. created before
            # a reconnect): keep it at the end rather than lose it.
            message = self._add(item_id, role)
            if message is None:
                return
        message.text = text

    def audio(self, item_id: str, ms: float) -> None:
        """``ms`` of the answer's audio arrived."""
        message = self._messages.get(item_id)
        if message is not None:
            message.audio_ms += ms

    def truncated(self, item_id: str, heard_ms: float) -> None:
        """The user heard only the first ``heard_ms`` of this answer."""
        message = self._messages.get(item_id)
        if message is not None:
            message.heard_ms = heard_ms

    def forget(self, item_id: str) -> None:
        self._messages.pop(item_id, None)

    def clear(self) -> None:
        self._messages.clear()

    def items(self) -> list[ConversationRequestItem]:
        """Conversation items that re-create the remembered turns, oldest first."""
        items: list[ConversationRequestItem] = []
        for message in self._messages.values():
            text = message.restored_text()
            if text is None:
                continue
            if message.role == "user":
                items.append(UserMessageItem(content=[InputTextContentPart(text=text)]))
            else:
                items.append(AssistantMessageItem(content=[OutputTextContentPart(text=text)]))
        return items

    def _add(self, item_id: str, role: Role) -> Message | None:
        if self.max_messages == 0:
            return None
        message = self._messages.get(item_id)
        if message is None:
            message = self._messages[item_id] = Message(role)
        while len(self._messages) > self.max_messages:
            self._messages.popitem(last=False)
        return message
