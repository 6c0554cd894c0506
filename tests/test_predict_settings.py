"""One PredictSection per run: config file → MLCube parameters file → --set → explicit flags
(a given flag wins even when it names the default), and the sliding-window batch setting."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from predict_fixtures import make_random_weights

from pipeline.cli import build_parser
from pipeline.commands.predict import predict_settings
from pipeline.config import PredictSection
from pipeline.errors import ConfigError
from pipeline.inference.sliding_window import predict_grid


def settings(*argv: str) -> PredictSection:
    return predict_settings(build_parser().parse_args(["predict", "-i", "in", "-o", "out", *argv]))


@pytest.fixture
def files(tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("task: {name: brats, label_convention: legacy}\npredict: {on_error: fail, overlap: 0.25}\n")
    params = tmp_path / "parameters.yaml"
    params.write_text("on_error: skip\ndevice: cpu\nweights: /w/brats\npredict: {overlap: 0.75, window_batch: 4}\n")
    return config, params


def test_explicit_on_error_empty_overrides_the_parameters_file(files):
    config, params = files
    s = settings("--config", str(config), "--parameters-file", str(params), "--on-error", "empty")
    assert s.on_error == "empty"  # the flag's value is the default, and still wins
    assert settings("--config", str(config), "--parameters-file", str(params)).on_error == "skip"
    assert settings("--config", str(config)).on_error == "fail"
    assert settings().on_error == "empty"


def test_every_source_in_order(files):
    config, params = files
    s = settings("--config", str(config), "--parameters-file", str(params))
    assert (s.device, str(s.weights), s.overlap, s.window_batch) == ("cpu", "/w/brats", 0.75, 4)  # file over config
    assert s.label_convention == "legacy" and s.tta is False  # unset in predict: the task's convention
    s = settings("--config", str(config), "--parameters-file", str(params), "--set", "predict.overlap=0.1",
                 "--set", "predict.device=cuda", "--device", "auto", "--weights", "/x", "--tta",
                 "--label-convention", "2023", "--mode", "brats")
    assert (s.overlap, s.device, str(s.weights), s.tta, s.label_convention, s.mode) == (
        0.1, "auto", "/x", True, "2023", "brats")  # --set over the file, flags over --set


def test_bad_settings_are_one_line_errors(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("on_error: ignore\n")
    with pytest.raises(ConfigError, match=r"predict\.on_error: Input should be 'empty', 'skip' or 'fail'"):
        settings("--parameters-file", str(params))
    with pytest.raises(ConfigError, match=r"predict\.window_batch: Input should be greater than or equal to 1"):
        settings("--set", "predict.window_batch=0")


def test_infer_leaves_the_device_to_the_parameters_file(monkeypatch, tmp_path):
    from pipeline.commands import predict

    seen = []
    monkeypatch.setattr("pipeline.cli.main", lambda argv: seen.append(argv) or 0)
    predict.infer_main(["--data_path=/d", "--output_path=/o"])
    predict.infer_main(["--data_path=/d", "--output_path=/o", "--device=cpu"])
    assert "--device" not in seen[0] and seen[1][-2:] == ["--device", "cpu"]


# window_batch ---------------------------------------------------------------------------------
def test_batched_windows_equal_one_by_one():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 3, padding=1))
    calls: list[int] = []

    def forward(t):
        calls.append(t.shape[0])
        return net(t)

    x = torch.randn(1, 2, 19, 37, 30)
    with torch.inference_mode():
        one = predict_grid(forward, x, 3, (8, 16, 16), overlap=0.5, mirror_axes=(0,))
        n_windows = len(calls) // 2  # mirror TTA: two passes per window
        calls.clear()
        four = predict_grid(forward, x, 3, (8, 16, 16), overlap=0.5, mirror_axes=(0,), window_batch=4)
        assert calls[:2] == [4, 4] and sum(calls) == 2 * n_windows and len(calls) == 2 * -(-n_windows // 4)
        every = predict_grid(forward, x, 3, (8, 16, 16), overlap=0.5, mirror_axes=(0,), window_batch=1000)
    assert n_windows > 4
    torch.testing.assert_close(four, one, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(every, one, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="window_batch"):
        predict_grid(forward, x, 3, (8, 16, 16), window_batch=0)


def test_predictor_window_batch_keeps_the_fine_logits(tmp_path):
    """The real fine network (modality mask included) on a sliding window: batch 3 == batch 1."""
    from pipeline.inference.engine import Predictor
    from pipeline.weights import load_weights

    weights = load_weights(make_random_weights(tmp_path / "w", task="brats", fine_size=(16, 32, 32),
                                               fine_patch=(16, 16, 16), fp16=False))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 16, 32, 40)).astype(np.float32)
    mask = np.array([True, False, True, True])
    out = {}
    with torch.inference_mode():
        for batch in (1, 3):
            pred = Predictor(weights, torch.device("cpu"), PredictSection(window="sliding", window_batch=batch))
            out[batch] = pred._net("fine", x, mask, pred._patch("fine", (16, 32, 40)))
    assert out[1].shape == (4, 16, 32, 40)
    torch.testing.assert_close(out[3], out[1], rtol=1e-4, atol=1e-4)
