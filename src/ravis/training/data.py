"""Training and evaluation inputs: query embeddings plus indices of their neighbours in memory.

Keys and values are gathered per batch from the memory arrays rather than materialised per
query: (N, k, d) for a 60k-query set at k=100, d=1280 would be 30 GB. The memory arrays are
only the rows some query retrieved (:meth:`MemoryTensors.gather`), read once from the memory
in its stored dtype: at most N * k rows however large the memory is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class MemoryTensors:
    """The memory rows the fusion modules read (stored dtype; batches come out float32)."""

    keys: torch.Tensor  # (M', d)
    values: torch.Tensor  # (M', d')

    @classmethod
    def from_numpy(cls, keys: np.ndarray, values: np.ndarray) -> "MemoryTensors":
        return cls(torch.from_numpy(np.ascontiguousarray(keys, dtype=np.float32)),
                   torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)))

    @classmethod
    def for_queries(cls, memory, neighbors: np.ndarray, budget_bytes: int) -> tuple["MemoryTensors", np.ndarray]:
        """The memory rows that queries with (N, k) ``neighbors`` read: gathered into RAM
        once when they fit ``budget_bytes``, else read batch by batch from the memory (a
        training set of 10^6 queries at k = 100 retrieves up to 10^8 rows)."""
        rows = np.unique(np.where(neighbors >= 0, neighbors, 0))
        row_bytes = (memory.dim + memory.value_dim) * np.dtype(memory.dtype).itemsize
        if len(rows) * row_bytes <= budget_bytes:
            tensors, (local,) = cls.gather(memory, neighbors)
            return tensors, local
        return cls(MappedRows(memory, "keys"), MappedRows(memory, "values")), neighbors

    @classmethod
    def gather(cls, memory, *neighbor_sets: np.ndarray) -> tuple["MemoryTensors", list[np.ndarray]]:
        """The rows of ``memory`` (a :class:`~ravis.memory.base.Memory`) that any of the
        (N, k) ``neighbor_sets`` name, and each set renumbered into them.

        A missing neighbour (-1, an index that found fewer than k) reads row 0, as the
        predictor does. Keys and values keep the memory's dtype (float16 halves the RAM);
        :meth:`QuerySet.batch` converts each batch to float32.
        """
        flat = [np.where(I >= 0, I, 0).ravel() for I in neighbor_sets]
        rows, inverse = np.unique(np.concatenate(flat) if flat else np.zeros(0, np.int64),
                                  return_inverse=True)
        local, start = [], 0
        for I, f in zip(neighbor_sets, flat):
            local.append(inverse[start:start + len(f)].reshape(I.shape).astype(np.int64))
            start += len(f)
        tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))
        return cls(tensor(memory.keys_at(rows)), tensor(memory.values_at(rows))), local


class MappedRows:
    """Keys or values of a memory read per batch: ``rows[I]`` for an index tensor I of any
    shape gives the rows (I.shape + (width,)) from the memory-mapped memory (-1 reads row 0)."""

    def __init__(self, memory, kind: str):
        self.read = memory.keys_at if kind == "keys" else memory.values_at

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        rows = np.clip(idx.numpy().ravel(), 0, None)
        return torch.from_numpy(self.read(rows)).reshape(*idx.shape, -1)


@dataclass
class QuerySet:
    """Queries with their precomputed neighbours.

    ``direct_values`` replaces the gathered values when a method brings its own per-query
    value (RAC-style fusion: one embedding of the neighbours' concatenated texts).
    ``neighbor_labels`` are the neighbours' memory labels in the experiment's classes (-1:
    none, or no neighbour), for a classifier that reads them (:func:`ravis.memory.base.neighbor_labels`).
    """

    z: torch.Tensor  # (N, d)
    neighbors: torch.Tensor  # (N, k) indices into memory
    labels: torch.Tensor  # (N,)
    direct_values: torch.Tensor | None = None  # (N, k', d')
    neighbor_labels: torch.Tensor | None = None  # (N, k)

    def __len__(self) -> int:
        return self.z.shape[0]

    @classmethod
    def from_numpy(cls, z, neighbors, labels, direct_values=None, neighbor_labels=None) -> "QuerySet":
        t = lambda a, dt: None if a is None else torch.from_numpy(np.ascontiguousarray(a, dtype=dt))
        return cls(t(z, np.float32), t(neighbors, np.int64), t(labels, np.int64),
                   t(direct_values, np.float32), t(neighbor_labels, np.int64))

    def subset(self, idx: np.ndarray) -> "QuerySet":
        idx = torch.as_tensor(idx, dtype=torch.long)
        pick = lambda t: None if t is None else t[idx]
        return QuerySet(self.z[idx], self.neighbors[idx], self.labels[idx], pick(self.direct_values),
                        pick(self.neighbor_labels))

    def batch(self, idx: torch.Tensor, memory: MemoryTensors, reads=("keys", "values"),
              buffers: "BatchBuffers | None" = None):
        """(inputs, labels (B,)) for the rows ``idx``: inputs (z (B, d), keys (B, k, d),
        values (B, k, d'), neighbour labels (B, k) or None) are the model's arguments.

        A method that does not read keys or values (``reads``) gets (B, k, 0) placeholders:
        gathering 512 x 100 x 1280 keys per batch would dominate a linear probe's step.
        With ``buffers`` the keys and values are gathered into arrays reused from the last
        batch, so they are only valid until the next call.
        """
        nbr = self.neighbors[idx]  # (B, k)
        empty = self.z.new_zeros((*nbr.shape, 0))
        gather = buffers.gather if buffers is not None else _gather
        keys = gather("keys", memory.keys, nbr) if "keys" in reads else empty  # (B, k, d)
        if self.direct_values is not None:
            values = self.direct_values[idx]
        else:
            values = gather("values", memory.values, nbr) if "values" in reads else empty  # (B, k, d')
        nbr_labels = None
        if "labels" in reads:
            if self.neighbor_labels is None:
                raise ValueError("the model reads its neighbours' labels; this query set has none")
            nbr_labels = self.neighbor_labels[idx]
        return (self.z[idx], keys, values, nbr_labels), self.labels[idx]


def _gather(name: str, table, nbr: torch.Tensor) -> torch.Tensor:
    return table[nbr].float()


class BatchBuffers:
    """Output arrays for the per-batch gathers of keys and values, reused from batch to batch.

    A fresh (512, 100, 1280) float32 array per step costs more in page faults than the copy
    into it: the gather takes 0.24 s into a new array and 0.09 s into a reused one. A
    training step or a prediction batch reads its keys before the next batch is gathered,
    so one set serves a whole training run (:func:`ravis.training.trainer.fit`, its
    validation passes included).
    """

    def __init__(self):
        self._flat: dict[tuple, torch.Tensor] = {}

    def _buffer(self, name: str, dtype: torch.dtype, n: int) -> torch.Tensor:
        buf = self._flat.get((name, dtype))
        if buf is None or buf.numel() < n:
            buf = self._flat[(name, dtype)] = torch.empty(n, dtype=dtype)
        return buf[:n]

    def gather(self, name: str, table, nbr: torch.Tensor) -> torch.Tensor:
        if not isinstance(table, torch.Tensor):  # rows read from a mapped memory are fresh anyway
            return _gather(name, table, nbr)
        width = table.shape[1]
        rows = self._buffer(name, table.dtype, nbr.numel() * width).view(-1, width)
        torch.index_select(table, 0, nbr.reshape(-1), out=rows)
        if table.dtype != torch.float32:
            rows = self._buffer(name + "/float32", torch.float32, rows.numel()).view(-1, width).copy_(rows)
        return rows.view(*nbr.shape, width)
