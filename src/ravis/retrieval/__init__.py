"""Neighbour precomputation: the k nearest memory entries of each query, self-excluded, cached."""

from .neighbors import cached_neighbors, index_fingerprint, search_neighbors, self_rows_from_ids

__all__ = ["cached_neighbors", "index_fingerprint", "search_neighbors", "self_rows_from_ids"]
