"""Serving a trained run: prediction API, web page and Prometheus metrics (FastAPI + uvicorn).

    from ravis.serve import create_app, serve

The app and the server load FastAPI and the model code, so they are imported on first use:
the command line reads the limits below without them.
"""

DEFAULT_MAX_BYTES = 10 * 1024 * 1024  # the largest upload: 10 MB
DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: any camera photo; far below what would exhaust RAM

_LAZY = {"create_app": "app", "ApiError": "uploads", "serve": "server", "is_loopback": "server"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)


__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_PIXELS", "ApiError", "create_app", "is_loopback", "serve"]
