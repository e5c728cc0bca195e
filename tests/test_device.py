"""Device selection: auto, cpu, cuda[:N]; clear errors where the machine has no such device;
CUDA paths behind the `gpu` marker (deselected where there is no GPU, as in CI)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from ravis.cli import main
from ravis.config import ConfigError, load_preset
from ravis.device import DeviceError, onnx_providers, resolve_device
from ravis.index.exact import ExactIndex

TINY = Path(__file__).parents[1] / "configs" / "tiny.yaml"
NO_GPU = not torch.cuda.is_available()


def test_cpu_and_auto(caplog):
    assert resolve_device("cpu") == torch.device("cpu")
    with caplog.at_level("INFO"):
        auto = resolve_device("auto")
    if NO_GPU:
        assert auto == torch.device("cpu") and "no CUDA device, the CPU is used" in caplog.text
    else:
        assert auto.type == "cuda"


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
@pytest.mark.parametrize("spec, says", [("cuda", "sees no CUDA device"), ("cuda:1", "sees no CUDA device"),
                                        ("gpu", "expected auto, cpu, cuda or cuda:N"),
                                        ("cuda:x", "expected auto, cpu, cuda or cuda:N")])
def test_a_device_the_machine_lacks_is_a_clear_error(spec, says):
    with pytest.raises(DeviceError, match=says):
        resolve_device(spec)


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_run_with_cuda_and_no_gpu_stops_before_any_work(tmp_path, capsys):
    assert main(["run", "-c", str(TINY), "--device", "cuda", "--quiet", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "sees no CUDA device" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "r" / "results.json").exists()


def test_run_device_is_checked_in_the_config():
    assert load_preset(TINY, ["device=cuda:1"]).device == "cuda:1"
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N"):
        load_preset(TINY, ["device=tpu"])


def test_onnx_providers(caplog):
    assert onnx_providers(None) == onnx_providers(torch.device("cpu")) == ["CPUExecutionProvider"]
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with caplog.at_level("WARNING"):
            assert onnx_providers(torch.device("cuda", 0)) == ["CPUExecutionProvider"]
        assert "no CUDA provider" in caplog.text


def test_exact_index_to_cpu_is_unchanged():
    rng = np.random.default_rng(0)
    xb, xq = rng.standard_normal((500, 16)).astype(np.float32), rng.standard_normal((7, 16)).astype(np.float32)
    a, b = ExactIndex(16), ExactIndex(16).to("cpu")
    a.add(xb)
    b.add(xb)
    for x, y in zip(a.search(xq, 10), b.search(xq, 10)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.gpu
def test_exact_search_on_the_gpu_matches_the_cpu():
    rng = np.random.default_rng(0)
    xb, xq = rng.standard_normal((20000, 64)).astype(np.float32), rng.standard_normal((300, 64)).astype(np.float32)
    cpu, gpu = ExactIndex(64), ExactIndex(64).to("cuda")
    cpu.add(xb)
    gpu.add(xb)
    (Dc, Ic), (Dg, Ig) = cpu.search(xq, 20), gpu.search(xq, 20)
    np.testing.assert_allclose(Dg, Dc, rtol=1e-4, atol=1e-4)
    assert (Ig == Ic).mean() > 0.99  # ties in the last ulp may swap


@pytest.mark.gpu
def test_training_on_the_gpu(tmp_path, ravis_cache):
    assert main(["run", "-c", str(TINY), "--device", "cuda", "--quiet", "--out", str(tmp_path / "r"),
                 "--cache", str(ravis_cache)]) == 0
    import json

    results = json.loads((tmp_path / "r" / "results.json").read_text())
    assert results["experiments"][0]["methods"]["mam"]["top1"] > 0.5


def test_out_of_gpu_memory_halves_the_batch(caplog):
    """An encoder that runs out of memory above 8 images: the batch is split until it fits,
    the output is what one call would give, and the run says so."""
    from ravis.encoders.embed import encode_halving

    class Small:
        name = "small-gpu"
        calls = []

        def encode_pixels(self, pixels):
            self.calls.append(len(pixels))
            if len(pixels) > 8:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
            return pixels.reshape(len(pixels), -1)[:, :4].astype(np.float32)

    pixels = np.arange(40 * 6, dtype=np.float32).reshape(40, 6)
    enc = Small()
    with caplog.at_level("WARNING"):
        out = encode_halving(enc, pixels)
    np.testing.assert_array_equal(out, pixels[:, :4])
    assert max(c for c in enc.calls if c <= 8) <= 8 and "out of GPU memory at a batch of 40" in caplog.text

    class Broken(Small):
        def encode_pixels(self, pixels):
            raise ValueError("not a memory problem")

    with pytest.raises(ValueError, match="not a memory problem"):
        encode_halving(Broken(), pixels)
