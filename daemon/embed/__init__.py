"""Embedding: building and checking GGUF models, and the resident llama.cpp context."""
