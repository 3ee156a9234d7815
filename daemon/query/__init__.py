"""Answering queries: one search hit type, ranking a store's vectors and rendering hits."""
