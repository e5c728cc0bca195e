"""Experiments end to end: the cached stages before training (:mod:`.prepare`), each method
trained and evaluated (:mod:`.train_eval`, the vote in :mod:`.vote`, choices on validation in
:mod:`.selection`), the results (:mod:`.results`), what serving needs (:mod:`.export`), and a
whole run (:mod:`.run`)."""

from .prepare import Prepared, prepare
from .results import MethodResult
from .run import run
from .train_eval import train_method
from .vote import vote_result

__all__ = ["MethodResult", "Prepared", "prepare", "run", "train_method", "vote_result"]
