"""data.hold_out_fraction: classes left out of training, the memory and the test split."""

from pathlib import Path

import numpy as np

from ravis.config import load_preset
from ravis.data.dataset import held_out_classes
from ravis.experiment.prepare import prepare

TINY = Path(__file__).parents[2] / "configs" / "tiny.yaml"


def test_held_out_classes_are_nowhere(ravis_cache):
    cfg = load_preset(TINY, ["data.hold_out_fraction=0.2"])
    exp = cfg.experiments[0]
    prep = prepare(cfg, exp, ravis_cache, progress=False)
    full = load_preset(TINY)
    all_names = prepare(full, full.experiments[0], ravis_cache, progress=False).train.dataset.class_names
    held = held_out_classes(all_names, 0.2, exp.data.split_seed)
    assert len(held) == 2 and not set(held) & set(prep.train.dataset.class_names)
    assert prep.train.dataset.class_names == [c for c in all_names if c not in held]
    for split in (prep.train, prep.test):
        assert split.dataset.labels.min() >= 0 and split.dataset.labels.max() < 8
        assert len(split.z) == len(split.dataset)
    assert prep.memory.class_names == prep.train.dataset.class_names
    assert (prep.memory.labels_at(np.arange(len(prep.memory))) >= 0).all()
    assert held_out_classes(all_names, 0.2, 0) == held_out_classes(all_names, 0.2, 0)  # seeded
