"""Running the server: warm the model up, then uvicorn until interrupted."""

from __future__ import annotations

import ipaddress
import logging

from . import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS
from .app import create_app

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(predictor, host: str = "127.0.0.1", port: int = 8000, *, max_bytes: int = DEFAULT_MAX_BYTES,
          max_pixels: int = DEFAULT_MAX_PIXELS, log_level: str = "info",
          edit_token: str | None = None, load_options: dict | None = None) -> None:
    """Runs the server until interrupted. Binds to loopback unless ``host`` says otherwise."""
    import uvicorn

    if not is_loopback(host):
        log.warning("serving on %s: reachable from other machines", host)
    from PIL import Image

    from .threads import tune_for_latency

    tune_for_latency(predictor)
    predictor.predict([Image.new("RGB", (64, 64), "white")])  # warm-up: the first call pays for setup
    from .models import ServedModels

    models = ServedModels(predictor, predictor.run_dir, load_options)  # the run's other models
    app = create_app(predictor, max_bytes=max_bytes, max_pixels=max_pixels, edit_token=edit_token,
                     models=models)
    uvicorn.run(app, host=host, port=port, log_level=log_level)

