"""The one device choice and AMP decision (pipeline.device), with CUDA mocked: no GPU here.

The expected dtypes are the documented policy (bf16 where the GPU supports it, fp16 with a
GradScaler otherwise, fp32 without autocast on the CPU), checked through both users: the
training AmpPolicy and the inference Predictor."""

from __future__ import annotations

import pytest
import torch

from pipeline.device import amp_dtype, autocast, pick_device
from pipeline.errors import SegpipeError
from pipeline.training.amp import amp_policy


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA present with 2 devices; `set_bf16(False)` makes it an older (pre-Ampere) GPU."""
    state = {"bf16": True}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: state["bf16"])
    return lambda value: state.__setitem__("bf16", value)


def test_pick_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu") and pick_device("cpu") == torch.device("cpu")
    with pytest.raises(SegpipeError, match="--device cuda: no CUDA device"):
        pick_device("cuda")
    with pytest.raises(SegpipeError, match="--device 'gpu'"):
        pick_device("gpu")


def test_pick_device_with_cuda_is_rank_local(fake_cuda):
    assert pick_device("auto") == torch.device("cuda", 0)
    assert pick_device("cuda", local_rank=3) == torch.device("cuda", 1)  # 2 GPUs: rank 3 → cuda:1
    assert pick_device("cpu") == torch.device("cpu")


def test_amp_on_a_bf16_gpu(fake_cuda):
    cuda = torch.device("cuda", 0)
    assert amp_dtype(cuda, "auto") == torch.bfloat16 and amp_dtype(cuda, "fp16") == torch.float16
    assert amp_dtype(cuda, "fp32") is None
    policy = amp_policy(cuda, "auto")
    assert policy.name == "bf16" and policy.scaler is None  # bf16 needs no loss scaling


def test_amp_on_an_older_gpu_is_fp16_with_a_grad_scaler(fake_cuda):
    fake_cuda(False)
    cuda = torch.device("cuda", 0)
    assert amp_dtype(cuda, "auto") == torch.float16
    assert amp_dtype(cuda, "bf16") == torch.bfloat16  # asked for explicitly: the user's call
    policy = amp_policy(cuda, "auto")
    assert policy.name == "fp16" and isinstance(policy.scaler, torch.amp.GradScaler)
    assert amp_policy(cuda, "fp32").scaler is None


def test_amp_on_the_cpu_is_fp32_without_autocast(fake_cuda):
    cpu = torch.device("cpu")
    for mode in ("auto", "fp32", "bf16", "fp16"):
        assert amp_dtype(cpu, mode) is None  # training, and inference unless bf16 is asked for
    for mode in ("auto", "fp32", "fp16"):
        assert amp_dtype(cpu, mode, inference=True) is None  # a GPU config still runs on a CPU
    policy = amp_policy(cpu, "auto")
    assert policy.name == "fp32" and policy.scaler is None
    with pytest.raises(ValueError, match="needs a CUDA device"):  # training: asked for, refused
        amp_policy(cpu, "bf16")
    with autocast(cpu, None):
        assert not torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="amp='fp8'"):
        amp_dtype(cpu, "fp8")


def test_the_predictor_takes_its_dtype_from_the_same_decision(fake_cuda, tmp_path):
    from predict_fixtures import make_random_weights

    from pipeline.config import PredictSection
    from pipeline.inference.engine import Predictor
    from pipeline.weights import load_weights

    weights = load_weights(make_random_weights(tmp_path / "w"))
    cuda = torch.device("cuda", 0)
    assert Predictor(weights, cuda, PredictSection(amp="auto")).amp_dtype == torch.bfloat16
    fake_cuda(False)
    assert Predictor(weights, cuda, PredictSection(amp="auto")).amp_dtype == torch.float16
    from pipeline.device import cpu_has_native_bf16

    cpu = torch.device("cpu")
    assert Predictor(weights, cpu, PredictSection(amp="auto")).amp_dtype is None
    assert Predictor(weights, cpu, PredictSection(amp="bf16")).amp_dtype == (
        torch.bfloat16 if cpu_has_native_bf16() else None)


def test_explicit_bf16_inference_on_a_cpu_with_native_bf16(monkeypatch):
    import pipeline.device as device

    cpu = torch.device("cpu")
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert amp_dtype(cpu, "bf16", inference=True) == torch.bfloat16
    assert amp_dtype(cpu, "auto", inference=True) is None  # only when asked for
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert amp_dtype(cpu, "bf16", inference=True) is None  # emulated bf16 would only be slower
