"""`segpipe predict` says so, once per run, when weights trained on synthetic data meet an image
that segpipe synth did not write (issue #14), and not for synthetic inputs. Weights that do not
claim synthetic training data: tests/test_provenance.py."""

from __future__ import annotations

import logging

import pytest
from predict_fixtures import ct_volume, make_random_weights, save_image

from pipeline.config import PredictSection
from pipeline.inference.runner import run_predict
from pipeline.inference.synthetic import write_flare_case

SYNTHETIC = {"synthetic": True, "generator": "segpipe synth", "kind": "flare", "seed": 0, "size": "small", "cases": 24}


@pytest.fixture(scope="module")
def synthetic_weights(tmp_path_factory):
    return make_random_weights(tmp_path_factory.mktemp("w") / "flare_synth", extra={"training_data": SYNTHETIC})


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "synthetic data" in r.getMessage()]


def run(inp, out, weights, caplog) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="segpipe.predict"):
        result = run_predict(inp, out, PredictSection(weights=weights, device="cpu", num_threads=1))
    assert result.exit_code == 0 and len(result.written) == 2
    return warnings_of(caplog)


def test_synthetic_inputs_run_without_the_warning(tmp_path, synthetic_weights, caplog):
    inp = tmp_path / "in"
    for seed in (3, 4):
        write_flare_case(inp / f"FLARE22_Ts_{seed:04d}_0000.nii.gz", None, seed, orientation="ras")
    assert run(inp, tmp_path / "out", synthetic_weights, caplog) == []


def test_real_looking_inputs_get_one_warning_per_run(tmp_path, synthetic_weights, caplog):
    inp = tmp_path / "in"
    for i in range(2):
        save_image(ct_volume(seed=i), inp / f"scan_{i:03d}_0000.nii.gz")
    lines = run(inp, tmp_path / "out", synthetic_weights, caplog)
    assert len(lines) == 1, lines  # one line per run, not per case
    assert lines[0].startswith(f"weights {synthetic_weights} were trained on synthetic data "
                               "(segpipe synth flare, seed 0, size small, 24 cases): fine for smoke tests, the demo "
                               "and the contract checks; for real scans train on real data")
    assert "scan_000" in lines[0]

