"""Thread settings for serving one query at a time on a small CPU.

Training and batch embedding want every core in every library. A server answering single
images wants the opposite: onnxruntime's worker threads spin after each run, and torch's and
faiss's OpenMP pools spin after theirs, so on 2 cores each stage steals the CPU the next one
needs. Measured on this 2-core machine with a 10^6-entry memory (benchmarks/bench_serve.py),
per-stage medians went from encode 17 / search 16 / fuse 46 ms to 8 / 8 / 2.5 ms.

These settings are process-wide, so only the server process applies them (``ravis serve``).
"""

from __future__ import annotations

import logging
import os

from ..encoders.base import OnnxImageEncoder

log = logging.getLogger(__name__)


def tune_for_latency(predictor) -> None:
    """Single-threaded torch and faiss (their work per query is too small to split), and an
    encoder session whose threads sleep instead of spinning between requests."""
    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    encoder = predictor.encoder
    if not isinstance(encoder, OnnxImageEncoder):  # a torch encoder: its threads are set above
        return
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    encoder.session = ort.InferenceSession(str(encoder.onnx_path), opts, providers=["CPUExecutionProvider"])
    log.info("encoder session without thread spinning: %s", encoder.onnx_path)


__all__ = ["tune_for_latency"]
