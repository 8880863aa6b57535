"""Knowledge: documents, extraction, chunking, the offline embedder and the Chroma index."""
