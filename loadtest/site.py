"""The site-like WebSocket scenario (``rapport loadtest ws --page-views N``): page views of a
site that embeds the chat widget, some of whose visitors chat (DESIGN.md, "Live sessions").

Each arrival is one page view, open loop at ``--views-per-second``. Its visitor stays on the
page for ``dwell`` seconds (drawn from a range); ``chat_share`` of the visitors, spread
evenly over the views, chat: after ``think`` seconds they send their first message, then
``messages - 1`` more, ``think`` seconds after each reply. When the visitor leaves (its dwell
over and its last reply in), its tab closes: the socket is dropped without a close frame, as
a closed tab drops it, so the server keeps the session until its resume window (or its idle
timeout, or its duration) frees the slot.

- ``start="first-message"`` (the widget's default): a page view mints nothing; a chatting
  visitor mints on its first message.
- ``start="autostart"``: every page view mints at once and connects, waiting in the waiting
  room if it must; a tab that closes while still in line just drops its queue socket.

A chatting visitor's ``chat_wait`` runs from its first message to ``session.ready``: the
mint, the waiting room, the connect (with autostart, only what is left of them by then). A
session the server ended before the visitor's next message (the idle timeout, 4007) is
minted afresh on that message, as the widget does. Once a second, from the first page view,
``GET /api/sessions`` gives the deployment's slots held and the waiting room's length; the
teardown keeps sampling until the server holds nothing, at most ``settle_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from typing import Literal

from loadtest.client import Client
from loadtest.live_sessions import MINT_PATH, LiveSession, LiveSessions, Refused
from loadtest.measure import Recorder
from loadtest.result import SessionSample, SiteFigures
from loadtest.runner import Clock

Start = Literal["first-message", "autostart"]
SAMPLE_EVERY_S = 1.0
Span = tuple[float, float]
"""Seconds, drawn uniformly between the two (equal for a fixed time)."""


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least ``q`` of them at or below it."""
    if not values:
        return None
    ranked = sorted(values)
    return ranked[max(0, math.ceil(q * len(ranked)) - 1)]


class Site(LiveSessions):
    def __init__(
        self,
        *,
        url: str,
        key: str,
        page_views: int,
        chat_share: float,
        start: Start,
        dwell: Span,
        think: Span,
        messages: int,
        settle_s: float,
        persona_id: str | None = None,
        allow_remote: bool = False,
        seed: int | None = None,
    ) -> None:
        # The live-sessions machinery (mint body, waiting room, connect, a turn) is reused;
        # its own ramped sessions and talkers are not, hence no talkers.
        super().__init__(
            sessions=page_views, talkers=0, persona_id=persona_id,
            allow_remote=allow_remote, seed=seed,
        )  # fmt: skip
        if not 0 <= chat_share <= 1:
            raise ValueError(f"chat_share is a share between 0 and 1, not {chat_share}")
        if messages < 1:
            raise ValueError("a chatting visitor sends at least one message")
        for lo, hi in (dwell, think):
            if not 0 <= lo <= hi:
                raise ValueError(f"a span of seconds is LOW-HIGH with 0 <= LOW <= HIGH: {lo}-{hi}")
        self.url = url
        self.key = key
        self.chat_share = chat_share
        self.start = start
        self.dwell = dwell
        self.think = think
        self.messages = messages
        self.settle_s = settle_s
        self.views = 0
        self.chatting = 0
        self.waited = 0
        self.refused = 0
        self.mints = 0
        self.waits: list[float] = []
        self.samples: list[SessionSample] = []
        self.max_sessions: int | None = None
        self.sampler: asyncio.Task[None] | None = None

    def seconds(self, span: Span) -> float:
        return self.random.uniform(*span)

    # --- one page view ---------------------------------------------------------------------

    async def view(self, client: Client, clock: Clock, record: Recorder) -> None:
        if self.sampler is None:
            self.sampler = asyncio.create_task(self._sample(clock.origin))
        n = self.views
        self.views += 1
        # Spread evenly rather than drawn: every run of N views has the same chatters.
        chats = math.floor((n + 1) * self.chat_share) > math.floor(n * self.chat_share)
        leave_at = clock.intended + self.seconds(self.dwell)
        pending: asyncio.Task[tuple[LiveSession, float | None]] | None = None
        if self.start == "autostart":
            pending = asyncio.create_task(self.session(client, record))
        record.outcome("page view")
        if pending is None and not chats:
            return  # a page view that mints nothing costs nothing
        session: LiveSession | None = None
        try:
            if chats:
                self.chatting += 1
                taken, pending = pending, None  # chat() awaits it now
                session = await self.chat(client, clock, record, taken)
            await asyncio.sleep(max(0.0, leave_at - time.monotonic()))
        finally:
            if pending is not None:
                pending.cancel()  # the tab closed while in line: its queue socket goes too
                (got,) = await asyncio.gather(pending, return_exceptions=True)
                if isinstance(got, tuple):
                    session = got[0]
            if session is not None:
                self.close_tab(session)

    async def chat(
        self,
        client: Client,
        clock: Clock,
        record: Recorder,
        pending: asyncio.Task[tuple[LiveSession, float | None]] | None,
    ) -> LiveSession | None:
        """The chatting visitor's messages; the session it holds at the end, if any."""
        session: LiveSession | None = None
        for i in range(self.messages):
            await asyncio.sleep(self.seconds(self.think))
            due = time.monotonic()
            if session is None or session.closed is not None:
                if session is not None:
                    self.close_tab(session)
                if pending is None:
                    pending = asyncio.create_task(self.session(client, record))
                try:
                    session, admitted_at = await pending
                except Refused:
                    if i == 0:
                        self.refused += 1
                    return None
                finally:
                    pending = None
                if i == 0:
                    self.waits.append(max(0.0, time.monotonic() - due))
                    record("chat_wait", self.waits[-1])
                    if admitted_at is not None and admitted_at > due:
                        self.waited += 1
            await self._turn(client, Clock(time.monotonic(), clock.origin), record, session)
        return session

    async def session(self, client: Client, record: Recorder) -> tuple[LiveSession, float | None]:
        """Mint, wait in line when queued, connect: the session and when it was admitted
        from the waiting room (None when it was not queued). Raises :class:`Refused`."""
        n = self.minted
        self.minted += 1
        body: dict[str, str] = {"user_id": f"lt-site-{self.run_id}-{n}", "mode": self.mode}
        if self.persona_id is not None:
            body["persona_id"] = self.persona_id
        since = time.monotonic()
        answer = await client.post(MINT_PATH, json=body)
        record("mint", time.monotonic() - since)
        record.outcome(f"mint {answer.outcome}")
        admitted_at = None
        if answer.status == 202:
            self.mints += 1
            since = time.monotonic()
            try:
                url = await self.admitted(client, answer.json()["queue_ws_url"])
            except Refused as exc:
                record.outcome(exc.outcome, ok=False)
                raise
            admitted_at = time.monotonic()
            record("queue_wait", admitted_at - since)
        elif answer.status == 201:
            self.mints += 1
            url = answer.json()["ws_url"]
        else:
            raise Refused(f"mint {answer.outcome}")
        since = time.monotonic()
        try:
            socket, _, last_seq = await self.connect(client, url)
        except Refused as exc:
            record.outcome(exc.outcome, ok=False)
            raise
        record("connect", time.monotonic() - since)
        live = LiveSession(url, socket, last_seq)
        live.listen(record.background())
        return live, admitted_at

    @staticmethod
    def close_tab(session: LiveSession) -> None:
        """Gone as a closed tab goes: no close frame, no ``session.end``."""
        session.leaving = True
        session.socket.transport.abort()
        if session.reader is not None:
            session.reader.cancel()

    # --- the deployment's sessions over time -----------------------------------------------

    async def _sample(self, origin: float) -> None:
        # A connection of its own, so that a generator with every connection busy still
        # samples on time.
        client = Client(self.url, key=self.key, connections=1, timeout_s=SAMPLE_EVERY_S)
        try:
            next_at = time.monotonic()
            while True:
                t = time.monotonic() - origin
                held = waiting = None
                with contextlib.suppress(OSError, EOFError, TimeoutError, ValueError, KeyError):
                    answer = await client.get(MINT_PATH)
                    if answer.status == 200:
                        capacity = answer.json()["capacity"]
                        held, waiting = capacity["slots_held"], capacity["waiting"]
                        self.max_sessions = capacity["max_sessions"]
                self.samples.append(SessionSample(round(t, 3), held, waiting))
                next_at += SAMPLE_EVERY_S
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            await client.aclose()

    def settled(self) -> bool:
        last = self.samples[-1] if self.samples else None
        return last is not None and last.held == 0 and last.waiting == 0

    async def close(self) -> None:
        """The teardown: sample on until the server has freed every session (the closed
        tabs' resume windows, the idle timeout), at most ``settle_s``."""
        if self.sampler is None:
            return
        deadline = time.monotonic() + self.settle_s
        count = len(self.samples)
        while time.monotonic() < deadline:
            if len(self.samples) > count and self.settled():
                break
            await asyncio.sleep(SAMPLE_EVERY_S / 4)
        self.sampler.cancel()
        await asyncio.gather(self.sampler, return_exceptions=True)

    def figures(self) -> SiteFigures:
        return SiteFigures(
            start=self.start,
            page_views=self.views,
            chatting=self.chatting,
            waited=self.waited,
            refused=self.refused,
            mints=self.mints,
            wait_p50_ms=_ms(percentile(self.waits, 0.50)),
            wait_p95_ms=_ms(percentile(self.waits, 0.95)),
            max_sessions=self.max_sessions,
            samples=self.samples,
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)
