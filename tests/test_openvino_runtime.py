"""OpenVINO as the CPU runtime (pipeline/inference/openvino_net.py), checked against torch's fp32 path
on the shipped trained weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
FLARE_DEMO, BRATS_DEMO = ROOT / "model_weights" / "flare_demo", ROOT / "model_weights" / "brats_demo"


@pytest.fixture(scope="module")
def flare_case(tmp_path_factory) -> tuple[Path, Path]:
    from pipeline.synth.dataset import write_flare_dataset

    root = tmp_path_factory.mktemp("ov_case")
    write_flare_dataset(root / "data", cases=1, size="small", seed=11)
    return root, next((root / "data" / "images").glob("*_0000.nii.gz"))


@pytest.fixture(scope="module")
def flare_ir(tmp_path_factory) -> Path:
    """A copy of the shipped FLARE weights with their OpenVINO IR, as `segpipe package --openvino` writes it."""
    from pipeline.cli import main

    dest = tmp_path_factory.mktemp("ov_weights") / "flare_ov"
    shutil.copytree(FLARE_DEMO, dest)
    assert main(["package", "--task", "flare", "--weights", str(dest), "--openvino", "--no-image"]) == 0
    return dest


def test_nominal_inputs_are_the_windows_every_case_sees():
    from pipeline.inference.openvino_net import nominal_input

    manifest = json.loads((FLARE_DEMO / "manifest.json").read_text())
    prep, stages = manifest["preprocessing"], manifest["stages"]
    assert nominal_input("coarse", stages["coarse"], prep) == [1, 32, 64, 64]  # the coarse grid
    assert nominal_input("fine", stages["fine"], prep) == [1, 32, 64, 64]  # sliding windows of the patch
    model = {"in_channels": 4, "channels": [8, 16, 32, 64, 128]}  # divisor 16
    whole = {"model": model, "patch_size": None}
    assert nominal_input("fine", whole, {"fine_size": [90, 192, 190]}) == [4, 96, 192, 192]  # padded whole sample
    assert nominal_input("fine", whole, {"fine_size": None, "fine_spacing": [1, 1, 1]}) is None  # per-case size


def test_packaged_ir_is_listed_hashed_and_verified(flare_ir, tmp_path):
    from pipeline.weights import WeightsError, load_weights

    manifest = json.loads((flare_ir / "manifest.json").read_text())
    for stage in ("coarse", "fine"):
        ir = manifest["stages"][stage]["openvino"]
        assert ir["input"] == [1, 32, 64, 64] and ir["mask"] == [True]
        for name in (ir["xml"], ir["bin"]):
            assert manifest["files"][name]["bytes"] == (flare_ir / name).stat().st_size
    assert not list(flare_ir.glob("tmp*")), "the conversion's temporary folder was left behind"
    tampered = tmp_path / "tampered"
    shutil.copytree(flare_ir, tampered)
    data = bytearray((tampered / "fine.openvino.bin").read_bytes())
    data[100] ^= 0xFF
    (tampered / "fine.openvino.bin").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"fine\.openvino\.bin: sha256 mismatch"):
        load_weights(tampered)


def test_openvino_predicts_organ_by_organ_like_torch_fp32(flare_ir, flare_case, one_torch_thread):
    from evaluation.surface import dice
    from pipeline.config import PredictSection
    from pipeline.inference.engine import Predictor
    from pipeline.inference.modes import InferenceCase
    from pipeline.weights import load_weights

    root, image = flare_case
    case = InferenceCase("ov", {"ct": image}, root / "out.nii.gz")
    torch_path = Predictor(load_weights(FLARE_DEMO), torch.device("cpu"), PredictSection())
    assert torch_path.runtime == "torch"  # auto: the shipped weights carry no IR
    reference = torch_path.predict(case).labels
    predictor = Predictor(load_weights(flare_ir), torch.device("cpu"), PredictSection())
    assert predictor.runtime == "openvino-ir"  # auto: packaged with --openvino
    got = predictor.predict(case).labels
    assert {k: v.compiled for k, v in predictor.openvino.items()} and all(predictor.openvino[s].compiled
                                                                          for s in ("coarse", "fine"))
    # auto never converts: a window the IR does not fit (here: another size) is left to torch
    fine = predictor.openvino["fine"]
    assert fine(torch.zeros(1, 1, 32, 64, 48), torch.ones(1, 1, dtype=torch.bool)) is None
    assert fine(torch.zeros(1, 1, 32, 64, 64), torch.ones(1, 1, dtype=torch.bool)) is not None
    organs = [int(k) for k in np.unique(reference) if k]
    assert len(organs) == 13
    per_organ = {k: dice(reference == k, got == k) for k in organs}
    assert min(per_organ.values()) >= 0.99, per_organ


def test_other_masks_are_converted_in_process_and_match_torch(one_torch_thread):
    """The missing-modality network (ShaSpec) branches on the mask in Python: each mask is its own graph."""
    from pipeline.inference.openvino_net import OpenVinoNet
    from pipeline.weights import load_weights

    weights = load_weights(BRATS_DEMO)
    sw = weights.stages["fine"]
    assert "openvino" not in sw.info  # no IR shipped: converted here
    net = OpenVinoNet(BRATS_DEMO, "fine", sw.model, sw.info, bf16=False, threads=1)
    x = torch.randn(2, 4, 24, 32, 32, generator=torch.Generator().manual_seed(0))
    outs = {}
    for bits in ((1, 0, 1, 0), (0, 0, 0, 1)):
        mask = torch.tensor([bits, bits], dtype=torch.bool)
        with torch.no_grad():
            expected = sw.model(x, mask)
        got = net(x, mask)
        assert got.shape == expected.shape
        scale = float(expected.abs().max())
        assert float((got - expected).abs().max()) <= 1e-3 * scale, bits
        assert float((got.argmax(1) == expected.argmax(1)).float().mean()) > 0.999
        outs[bits] = got
    assert len(net.compiled) == 2  # one graph per mask, kept
    assert not torch.allclose(outs[(1, 0, 1, 0)], outs[(0, 0, 0, 1)])


def test_runtime_choice(monkeypatch):
    from pipeline.errors import SegpipeError
    from pipeline.inference import openvino_net
    from pipeline.inference.engine import choose_runtime
    from pipeline.weights import load_weights

    weights = load_weights(FLARE_DEMO)
    assert choose_runtime("torch", torch.device("cpu"), weights) == "torch"
    assert choose_runtime("auto", torch.device("cpu"), weights) == "torch"  # the shipped weights carry no IR
    assert choose_runtime("openvino", torch.device("cpu"), weights) == "openvino"  # converts in process
    weights.stages["fine"].info["openvino"] = {"xml": "x", "bin": "b", "input": [1], "mask": [True]}
    assert choose_runtime("auto", torch.device("cpu"), weights) == "openvino-ir"
    assert choose_runtime("auto", torch.device("cuda"), weights) == "torch"
    with pytest.raises(SegpipeError, match="runs on the CPU"):
        choose_runtime("openvino", torch.device("cuda"), weights)
    monkeypatch.setattr(openvino_net, "openvino_available", lambda: False)
    assert choose_runtime("auto", torch.device("cpu"), weights) == "torch"
    with pytest.raises(SegpipeError, match="not installed"):
        choose_runtime("openvino", torch.device("cpu"), weights)


def test_conversion_sends_no_telemetry(tmp_path, monkeypatch):
    """openvino.convert_model reports to Google Analytics unless told not to, and writes an id file
    under $HOME first: with our conversion neither happens."""
    import openvino_telemetry

    from pipeline.inference.openvino_net import convert

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)  # CI=true alone would decline
    convert(_TwoInputs(torch.nn.Conv3d(1, 2, 3, padding=1)), [1, 8, 8, 8], np.ones(1, bool))
    assert not (tmp_path / "intel").exists()
    assert openvino_telemetry.Telemetry().consent is False


class _TwoInputs(torch.nn.Module):
    def __init__(self, conv: torch.nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.conv(x)
