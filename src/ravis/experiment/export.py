"""Exporting what makes an experiment's folder servable without the cache (the format is
:mod:`ravis.run_folder`'s): memory parts made from the dataset, references to memory folders,
thumbnails, and serving.json with each method's post-hoc logit adjustment (so served
probabilities are those the evaluation scored)."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from ..memory.store import ArrayMemory
from ..methods import method as get_method
from ..run_folder import ExperimentFolder
from ..evaluation.tables import kept_reason
from ..thumbnails import thumbnail_bytes, write_store, write_thumbnails
from ..training.loss import log_prior
from .prepare import Prepared, load_splits
from .results import MethodResult
from .selection import validation_split

log = logging.getLogger(__name__)

def logit_adjustment(prep: Prepared, method: str, result: MethodResult) -> list[float]:
    """The vector train_method subtracts from a method's test logits (post-hoc prior correction).

    Recomputed the way training made it: the prior of the fit split (the training set minus
    its validation rows). tests/serve checks served probabilities against the saved logits.
    """
    cfg = prep.config.train
    labels = prep.train.dataset.labels
    val = (validation_split(labels, cfg.val_fraction, cfg.seed) if cfg.val_fraction > 0
           else np.zeros(len(labels), dtype=bool))
    counts = np.bincount(labels[~val], minlength=prep.num_classes)
    tau = float(result.details.get("posthoc_tau", 0.0) or 0.0)
    return (tau * log_prior(counts).numpy()).astype(float).tolist()


def save_for_serving(folder: ExperimentFolder, prep: Prepared, methods: dict[str, MethodResult],
                     cache_dir: Path, copy_memory: bool = False) -> None:
    """Writes what serving needs into one experiment's folder: the memory parts made from
    the dataset (with thumbnails), references to (or copies of) memory folders, the test
    thumbnails and serving.json."""
    exp, memory = prep.config, prep.memory
    full_train, _ = load_splits(exp.data)
    parts = []
    for spec, part in memory.parts:
        if isinstance(part, ArrayMemory) and part.thumbnails is None:
            part.thumbnails = dataset_thumbnails(full_train, part.ids, cache_dir)
        parts.append(folder.save_memory_part(spec, part, copy_memory, cache_dir))
    write_thumbnails(folder.test_thumbnails, prep.test.dataset, cache_dir=cache_dir)
    write_samples(folder.test_samples, prep.test.dataset)
    folder.write_serving({
        "experiment": exp.name,
        "class_names": list(prep.train.dataset.class_names),
        "class_counts": [int(c) for c in prep.class_counts],
        "k": int(prep.test_I.shape[1]),
        "index": exp.retrieval.index,
        "memory": {"class_names": memory.class_names, "rows": len(memory), "parts": parts},
        "test_thumbnails": folder.test_thumbnails.name,
        "logit_adjustment": {name: logit_adjustment(prep, name, r) for name, r in methods.items()
                             if get_method(name).trains},
        # the temperature of each method's probabilities, chosen on validation: served
        # probabilities are the calibrated ones the results report
        "temperature": {name: r.details["calibration"]["temperature"] for name, r in methods.items()
                        if "calibration" in r.details},
        # what validation kept in place of a trained model, and why (the served model's name)
        "kept": {name: {"kept": r.details["kept"], "reason": kept_reason(r.details)}
                 for name, r in methods.items() if "kept" in r.details},
        # methods whose predictions need their fine-tuned encoder, and its keys policy (not
        # servable yet); one whose validation kept the frozen encoder is not among them
        "finetuned": {name: r.details["finetune"]["keys"] for name, r in methods.items()
                      if r.encoder is not None},
    })


SAMPLES = 8  # test images the page offers: the first test image of each of the first classes
SAMPLE_BYTES = 4 * 2**20  # a sample's PNG at most (the server's default upload limit is 10 MB)


def write_samples(path: Path, dataset) -> None:
    """Full-resolution copies (lossless PNG of the decoded pixels, which embed as the
    dataset's own images do) of a few test images, the page's samples: the first test image of
    each of the first SAMPLES classes, in test order. An image whose PNG would exceed
    SAMPLE_BYTES (a camera photo: 15-25 MB) is passed over for the next of its class: the page
    uploads the sample to /predict, which refuses more than 10 MB by default."""
    ids, images, seen = [], [], set()
    for row, y in enumerate(dataset.labels):
        if int(y) in seen:
            continue
        buffer = io.BytesIO()
        dataset.load_image(row).save(buffer, format="PNG")
        if buffer.tell() <= SAMPLE_BYTES:
            seen.add(int(y))
            ids.append(dataset.ids[row])
            images.append(buffer.getvalue())
        if len(ids) == SAMPLES or row >= 50 * SAMPLES:  # a few hundred tries at most
            break
    write_store(path, ids, images)


def dataset_thumbnails(dataset, ids: list[str], cache_dir: Path) -> list[bytes]:
    """Thumbnails of the dataset items ``ids`` (b"" where an image cannot be read)."""
    row_of = {item: r for r, item in enumerate(dataset.ids)}
    rows = np.array([row_of[i] for i in ids], dtype=np.int64)
    return thumbnail_bytes(dataset, rows, cache_dir=cache_dir)


__all__ = ["dataset_thumbnails", "logit_adjustment", "save_for_serving"]
