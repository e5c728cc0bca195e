"""Experiments end to end: cached stages (prepare), methods (train + evaluate), run outputs."""

from .methods import MethodResult, train_method, vote_result
from .prepare import Prepared, prepare
from ..run_folder import experiment_dir
from .run import run

__all__ = ["MethodResult", "Prepared", "experiment_dir", "prepare", "run",
           "train_method", "vote_result"]
