"""Ingestion: a path becomes text units (one module per format), then chunks.

The pipeline takes one file in and gives one store update out.
"""
