"""ravis: retrieval-augmented image recognition from image-text memories.

Implements Iscen, Fathi, Schmid, "Improving Image Recognition by Retrieving from Web-Scale
Image-Text Data" (CVPR 2023), with improvements that make the memory attention module the
best tool on small data too.
"""

__version__ = "0.1.0"


def load(run_dir, experiment=None, method=None, cache_dir=None, **options):
    """A :class:`ravis.predictor.Predictor` for a finished run folder (``options``: index,
    search_params); ``.predict(images)`` gives what ``POST /predict`` returns."""
    from .methods import DEFAULT_SERVED
    from .predictor import Predictor

    return Predictor.load(run_dir, experiment, method or DEFAULT_SERVED, cache_dir, **options)
