"""`<stage>.train.init_weights`: a run starts from packaged weights (fine-tuning), checked by the
manifest's sha256 and the architecture; every CPS network starts from the same tensors."""

from __future__ import annotations

import json

import pytest
import torch


def _run(tmp_path, weights: str, *, cps: bool = False, lr: float = 1e-9, channels=(4, 8, 16)):
    from safetensors.torch import load_file
    from train_helpers import make_config, make_source

    from coarse_seg.train import stage_spec
    from pipeline.tasks import get_task
    from pipeline.training.trainer import train_stage

    cfg = make_config(epochs=1, cps=cps, augment={"enabled": False})
    cfg.coarse.model.channels = list(channels)
    cfg.coarse.train.init_weights = weights
    cfg.coarse.train.lr = lr
    spec = stage_spec(cfg, get_task("flare"))  # 14 classes, one CT channel: the packaged net's shape
    out = tmp_path / "train"
    train_stage(spec, make_source(n_train=2, n_val=1, n_unl=2 if cps else 0), cfg.train, out)
    ckpt = sorted((out / "checkpoints").glob("epoch_*"))[-1] / "model.safetensors"
    return load_file(str(ckpt)), json.loads((out / "model_config.json").read_text())


def test_training_starts_from_the_packaged_network(tmp_path) -> None:
    from predict_fixtures import make_random_weights
    from safetensors.torch import load_file

    weights = make_random_weights(tmp_path / "w", seed=3, fp16=False)
    packaged = load_file(str(weights / "coarse.safetensors"))
    tensors, info = _run(tmp_path / "a", str(weights), cps=True)
    for net in (0, 1):  # both CPS networks, after two steps at lr 1e-9: still the packaged tensors
        for key, value in packaged.items():
            if value.is_floating_point():
                assert torch.allclose(tensors[f"nets.{net}.{key}"], value, atol=1e-6), key
    assert info["init_weights"]["folder"] == str(weights)
    # without init_weights the run starts elsewhere (the check above can fail)
    cold, _ = _run(tmp_path / "b", None)
    conv = next(k for k, v in packaged.items() if v.ndim == 5)
    assert not torch.allclose(cold[f"nets.0.{conv}"], packaged[conv], atol=1e-3)


def test_a_bare_name_is_looked_up_in_the_weights_root(tmp_path, monkeypatch) -> None:
    from predict_fixtures import make_random_weights

    make_random_weights(tmp_path / "root" / "tiny_flare", fp16=True)
    monkeypatch.setenv("SEGPIPE_WEIGHTS", str(tmp_path / "root"))
    _, info = _run(tmp_path / "a", "tiny_flare")
    assert info["init_weights"]["folder"] == str(tmp_path / "root" / "tiny_flare")


def test_wrong_architecture_missing_folder_and_tampered_weights_are_named(tmp_path) -> None:
    from predict_fixtures import make_random_weights

    from pipeline.errors import SegpipeError

    weights = make_random_weights(tmp_path / "w", fp16=False)
    with pytest.raises(SegpipeError, match=r"differs from the configured one \(channels: \[4, 8, 16\] there"):
        _run(tmp_path / "a", str(weights), channels=(4, 8, 32))
    with pytest.raises(SegpipeError, match=r"no manifest\.json"):
        _run(tmp_path / "b", str(tmp_path / "nowhere"))
    blob = bytearray((weights / "coarse.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (weights / "coarse.safetensors").write_bytes(bytes(blob))
    with pytest.raises(SegpipeError, match="sha256"):
        _run(tmp_path / "c", str(weights))
