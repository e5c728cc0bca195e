"""A real uvicorn server over the shared tiny run, on a free loopback port, for the session."""

import json

import pytest
from serve_helpers import Client, png_bytes, start_server


@pytest.fixture(scope="session")
def served(tiny_run):
    """(Client, predictor) of a server over the tiny run's MAM."""
    import ravis
    from ravis.serve import create_app

    predictor = ravis.load(tiny_run)
    server, thread, base = start_server(create_app(predictor))
    yield Client(base), predictor
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="session")
def query_png(tiny_run):
    """A real Fashion-MNIST test image (the first of the run's test split), as PNG bytes."""
    from ravis.data import load_fashion_mnist

    test_id = json.loads((tiny_run / "tiny-fmnist" / "test_ids.json").read_text())[0]
    return png_bytes(load_fashion_mnist().test.load_image(int(test_id.rsplit("/", 1)[1])))
