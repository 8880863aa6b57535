"""The built-in HTTP scenario: one ``POST /api/v1/conversation`` an operation.

Bodies vary: ``user_id`` ``lt-0`` … ``lt-{users-1}`` in turn, a question from a small built-in
list, and, for ``voice_share`` of them, a voice note instead of text (``ada.wav``, 4 s of
speech made with espeak-ng, as in ``tests/audio``). ``retry_share`` of them carry an
``Idempotency-Key``, and once answered 200 they are sent again, as the next arrival, with the
same key and body: that copy counts as ``200 replay`` when the answer is the first one byte
for byte and marked ``Idempotent-Replayed: true``, and ``200 replay differs`` (an error)
otherwise. Every answer is counted by status and error code (``429 rate_limited``,
``503 queue_unavailable``, ``504 upstream_timeout``…); the ``request`` latency runs from
the intended start to the last byte; the ``latency_breakdown`` of every first 200 goes to
the breakdown.
"""

from __future__ import annotations

import base64
import random
import secrets
from collections import deque
from importlib import resources

import msgspec

from loadtest.client import Client, Response
from loadtest.measure import Recorder
from loadtest.runner import Clock

PATH = "/api/v1/conversation"
QUESTIONS = (
    "When do you open?",
    "What does the Pro plan cost?",
    "Can I change my plan later?",
    "How do I reset my password?",
    "Do you ship abroad?",
    "What is your refund policy?",
    "Which plan suits a team of five?",
    "My name is Sam. Can you help me choose?",
    "Is there a free trial?",
    "How do I export my data?",
    "Do you have an API?",
    "Where can I read about security?",
)
VOICE_MIME = "audio/wav"
PENDING_REPLAYS = 1000
_encode = msgspec.json.Encoder().encode


def voice_note() -> str:
    """The packaged speech sample, base64."""
    data = resources.files("loadtest").joinpath("ada.wav").read_bytes()
    return base64.b64encode(data).decode("ascii")


class Conversation:
    """``POST /api/v1/conversation`` with varied bodies: a scenario (call it with a client,
    a clock and a recorder)."""

    def __init__(
        self,
        *,
        users: int = 100,
        voice_share: float = 0.0,
        retry_share: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if users < 1:
            raise ValueError("users must be at least 1")
        for name, share in (("voice_share", voice_share), ("retry_share", retry_share)):
            if not 0 <= share <= 1:
                raise ValueError(f"{name} is a share between 0 and 1, not {share}")
        self.users = users
        self.voice_share = voice_share
        self.retry_share = retry_share
        self.random = random.Random(seed)  # noqa: S311 (load shapes, not secrets)
        self.run_id = secrets.token_hex(4)
        self.n = 0
        self.voice = voice_note() if voice_share > 0 else None
        self.replays: deque[tuple[str, bytes, bytes]] = deque(maxlen=PENDING_REPLAYS)
        """(Idempotency-Key, body, first answer) of 200s waiting to be sent again."""

    def body(self, n: int) -> bytes:
        fields: dict[str, str] = {"user_id": f"lt-{n % self.users}"}
        if self.voice is not None and self.random.random() < self.voice_share:
            fields["voice_b64"] = self.voice
            fields["voice_mime"] = VOICE_MIME
        else:
            fields["message"] = QUESTIONS[n % len(QUESTIONS)]
        return _encode(fields)

    async def __call__(self, client: Client, clock: Clock, record: Recorder) -> None:
        headers = {"Content-Type": "application/json"}
        if self.replays:
            key, body, first = self.replays.popleft()
            headers["Idempotency-Key"] = key
            answer = await client.post(PATH, body=body, headers=headers)
            record("request", clock.elapsed())
            if answer.status == 200:
                same = (
                    answer.body == first
                    and answer.headers.get("idempotent-replayed", "").lower() == "true"
                )
                record.outcome("200 replay" if same else "200 replay differs", ok=same)
            else:
                record.outcome(answer.outcome)
            return
        n = self.n
        self.n += 1
        body = self.body(n)
        key = None
        if self.retry_share and self.random.random() < self.retry_share:
            key = headers["Idempotency-Key"] = f"lt-{self.run_id}-{n}"
        answer = await client.post(PATH, body=body, headers=headers)
        record("request", clock.elapsed())
        record.outcome(answer.outcome)
        if answer.status == 200:
            self.breakdown(answer, record)
            if key is not None:
                self.replays.append((key, body, answer.body))

    @staticmethod
    def breakdown(answer: Response, record: Recorder) -> None:
        try:
            figures = answer.json().get("latency_breakdown") or {}
        except (msgspec.DecodeError, AttributeError):
            return
        for name, value in figures.items():
            if isinstance(value, int | float):
                record.breakdown(name, float(value))
