"""The fine-tuned variant of a trained method (``train.finetune_encoder``, "Ours + FT").

After a method's fusion model is trained on the frozen embeddings, its encoder, fusion
module and classifier train together (:func:`ravis.training.finetune.finetune`). Then the
experiment's inputs are made again with the fine-tuned encoder, as ``train.finetune_keys``
says (docs/method.md, "Fine-tuning the encoder"):

- ``frozen`` (the default): the queries are embedded again; keys, values and neighbours stay
  the frozen encoder's, as fine-tuning trained with (a web-scale memory cannot be
  re-embedded for each fine-tuning run).
- ``reembed``: the memory's images, the training queries and the test queries are embedded
  again and the neighbours retrieved again: keys and queries come from one encoder, as they
  did before fine-tuning.

The rest of the method's evaluation (post-hoc adjustment on validation, the test metrics)
runs on those inputs. Weights are cached under a key of everything that determines them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from ..encoders import create_image_encoder
from ..encoders.embed import embed_images
from ..encoders.trainable import FineTunedEncoder, trainable_network
from ..io import stable_hash
from ..training.checkpoint import cached_weights
from ..training.joint import Images, JointModel, Pixels, finetune
from .prepare import Prepared, SplitData, prepare

#: TrainConfig fields that only the fine-tuning stage reads (the frozen-encoder model before
#: it is shared by runs with and without fine-tuning).
FINETUNE_FIELDS = ("finetune_encoder", "finetune_epochs", "finetune_batch_size", "encoder_lr",
                   "finetune_lr", "finetune_keys")


def finetune_method(run, model):
    """(fusion model, fine-tuned encoder, details) of the method ``run`` (a
    :class:`ravis.experiment.train_eval.MethodRun` after its ``train`` step): ``model``, its
    fusion model trained on the frozen embeddings, is fine-tuned in place with the encoder."""
    prep, cfg = run.prep, run.cfg
    base = create_image_encoder(run.exp.encoder, device=prep.device)
    joint = JointModel(trainable_network(base), model).to(prep.device)
    # the keys policy acts after training: both policies share the fine-tuned weights
    key = stable_hash("finetune-v1", run.key, {f: getattr(cfg, f) for f in FINETUNE_FIELDS
                                               if f != "finetune_keys"})
    name = f"{run.exp.name}/{run.name} tau={run.tau} finetune"

    def train(ckpt: Path) -> dict:
        pixels = Pixels(prep.train.dataset, base.preprocess)
        images = Images(pixels, np.flatnonzero(~run.val_mask), np.flatnonzero(run.val_mask))
        try:
            result = finetune(joint, images, run.fit_data(), cfg, tau=run.tau, checkpoint=ckpt,
                              resume=run.resume, log=(lambda s: run.log_fn(f"{name}: {s}")) if run.log_fn else None)
        finally:
            pixels.close()
        return {"best_epoch": result.best_epoch, "epochs_run": len(result.history), "steps": result.steps,
                "history": result.history, "initial_score": result.initial_score,
                "val_score": result.best_score}

    details = cached_weights(joint, run.cache_dir / "models" / f"{key}.safetensors",
                             run.checkpoint_dir / f"{key}.ckpt.safetensors", train)
    details["keys"] = cfg.finetune_keys
    return joint.fusion, FineTunedEncoder(base, joint.encoder, prep.device), details


def inputs_from(encoder: FineTunedEncoder, prep: Prepared, cache_dir: Path,
                reads_memory: bool = True) -> Prepared:
    """``prep`` with the queries (and with ``reembed`` keys and neighbours) from ``encoder``;
    a method that reads no memory gets its queries only, whatever the policy."""
    if prep.config.train.finetune_keys == "reembed" and reads_memory:
        new = prepare(prep.run, prep.config, cache_dir, progress=False, encoder=encoder)
        for old, split in ((prep.train, new.train), (prep.test, new.test)):
            # the validation mask and the test labels are applied by row: the rows must be the same
            if list(old.dataset.ids) != list(split.dataset.ids):
                raise RuntimeError(f"{prep.config.name}: the fine-tuned encoder could not embed the "
                                   "same images as the frozen one (some were unreadable this time)")
        return new
    queries = []
    for split in (prep.train, prep.test):
        out = embed_images(encoder, split.dataset, cache_dir, progress=False)
        if not out.valid.all():  # these images were read when the frozen encoder embedded them
            raise RuntimeError(f"{prep.config.name}: {int((~out.valid).sum())} images could not be read "
                               f"again for the fine-tuned encoder: {out.skipped[:3]}")
        queries.append(SplitData(split.dataset, out.embeddings))
    # a fresh rows_cache: what is cached there (the memory curve's neighbours) was searched
    # with the frozen encoder's queries
    return dataclasses.replace(prep, train=queries[0], test=queries[1], rows_cache={})


__all__ = ["FINETUNE_FIELDS", "finetune_method", "inputs_from"]
