"""Experiments end to end: cached stages (prepare), methods (train + evaluate), run outputs."""

from .methods import MethodResult, build_model, train_method, vote_result
from .prepare import Prepared, prepare
from .run import experiment_dir, run

__all__ = ["MethodResult", "Prepared", "build_model", "experiment_dir", "prepare", "run",
           "train_method", "vote_result"]
