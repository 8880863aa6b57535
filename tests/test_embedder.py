"""The offline embedder: real model, real tokenizer, real Chroma."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kb.embedder import DIMENSIONS, MAX_TOKENS, Embedder, MiniLMEmbeddingFunction


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(threads=1)


def test_unit_vectors_of_the_right_size(embedder: Embedder) -> None:
    vectors = embedder.embed(["Payment is processed after order confirmation.", "Hi"])
    assert vectors.shape == (2, DIMENSIONS) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.embed([]).shape == (0, DIMENSIONS)


def test_meaning_decides_similarity(embedder: Embedder) -> None:
    question, payment, plans, weather = embedder.embed(
        [
            "How do I pay for my order?",
            "Payment is processed after order confirmation.",
            "Basic is the right entry plan for a first rollout.",
            "It will rain in the mountains tomorrow.",
        ]
    )
    assert question @ payment > 0.4
    assert question @ payment > max(question @ plans, question @ weather) + 0.3


def test_padding_does_not_change_a_vector(embedder: Embedder) -> None:
    short = "Refunds take five days."
    alone = embedder.embed([short])[0]
    beside_a_long_text = embedder.embed([short, "word " * 200])[0]
    assert np.allclose(alone, beside_a_long_text, atol=1e-4)
    assert np.array_equal(embedder.embed([short])[0], alone), "deterministic"


def test_long_texts_are_truncated_not_refused(embedder: Embedder) -> None:
    long = "alpha beta gamma delta " * 200
    vectors, tokens = embedder.embed_counting([long, "hello world"])
    assert vectors.shape == (2, DIMENSIONS)
    # Knowledge units count what the model saw: the long text up to the limit, and
    # [CLS] hello world [SEP] (padding not counted).
    assert tokens == MAX_TOKENS + 4


def test_chroma_reopens_a_collection_with_it_offline(tmp_path: Path) -> None:
    # Two processes: the second names no embedding function and must get ours back from
    # the collection's stored configuration, not Chroma's downloading default.
    create = f"""
import chromadb
from chromadb.config import Settings
from kb.embedder import MiniLMEmbeddingFunction
client = chromadb.PersistentClient(
    path={str(tmp_path)!r}, settings=Settings(anonymized_telemetry=False)
)
c = client.create_collection("docs", embedding_function=MiniLMEmbeddingFunction(1))
c.add(ids=["pay", "plan"], documents=["Payment is processed after order confirmation.",
                                      "Basic is the right entry plan."])
"""
    query = f"""
import chromadb
import kb.embedder  # registers the function, as the app does on import
from chromadb.config import Settings
client = chromadb.PersistentClient(
    path={str(tmp_path)!r}, settings=Settings(anonymized_telemetry=False)
)
c = client.get_collection("docs")
print(type(c.configuration["embedding_function"]).__name__)
print(c.query(query_texts=["How do I pay?"], n_results=1)["ids"][0][0])
"""
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    for program in (create, query):
        done = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=120,
            env=env, cwd=Path(__file__).parent.parent,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["MiniLMEmbeddingFunction", "pay"]


def test_the_function_round_trips_its_config() -> None:
    function = MiniLMEmbeddingFunction(3, "minilm-l3")
    rebuilt = MiniLMEmbeddingFunction.build_from_config(function.get_config())
    assert rebuilt.get_config() == {"threads": 3, "model": "minilm-l3"}
    assert MiniLMEmbeddingFunction.name() == "rapport-minilm-l6-v2-int8"
    # A collection made before there was a choice of model names none: it was the default.
    old = MiniLMEmbeddingFunction.build_from_config({"threads": 2})
    assert old.get_config() == {"threads": 2, "model": "minilm-l6"}
