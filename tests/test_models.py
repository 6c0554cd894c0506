"""Coarse and fine networks: shapes, modality-mask semantics, batch-size-1 safety, export round trip."""

from __future__ import annotations

import pytest
import torch

import coarse_seg
import fine_seg
from pipeline.nn import StripPoolContext

TINY = {"channels": [4, 8, 16], "num_classes": 5}


@pytest.mark.parametrize("mod", [coarse_seg, fine_seg])
def test_shapes_odd_sizes_and_deep_supervision(mod) -> None:
    net = mod.build_model({**TINY, "deep_supervision": True})
    x = torch.randn(2, 1, 9, 14, 11)
    outs = net(x, torch.ones(2, 1, dtype=torch.bool))
    assert isinstance(outs, list) and len(outs) == 2
    assert outs[0].shape == (2, 5, 9, 14, 11)
    assert outs[1].shape == (2, 5, 5, 7, 6)  # ½ resolution (ceil) for the auxiliary head
    net.eval()
    assert net(x).shape == (2, 5, 9, 14, 11)  # eval: the main output only


@pytest.mark.parametrize("norm", ["instance", "batch"])
def test_batch_size_one_with_tiny_bottleneck(norm: str) -> None:
    # bottleneck 2×2×2: the context block pools to 1×1×1; normalising that would raise at batch 1
    net = fine_seg.build_model({**TINY, "norm": norm})
    net.train()
    out = net(torch.randn(1, 1, 8, 8, 8), torch.ones(1, 1, dtype=torch.bool))
    out.mean().backward()
    block = StripPoolContext(8, norm=norm)
    block.train()
    block(torch.randn(1, 8, 1, 2, 1)).sum().backward()


def test_missing_modalities_are_zeroed_inside_the_model() -> None:
    net = fine_seg.build_model({**TINY, "in_channels": 4, "mask_channels": True}).eval()
    x = torch.randn(2, 4, 8, 8, 8)
    mask = torch.tensor([[True, False, True, True], [False, False, False, True]])
    garbage = x.clone()
    garbage[0, 1] = 1e3
    garbage[1, :3] = torch.randn(3, 8, 8, 8) * 50
    with torch.no_grad():
        a, b = net(x, mask), net(garbage, mask)
        full = net(x, torch.ones(2, 4, dtype=torch.bool))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, full)  # the mask does change the prediction
    with pytest.raises(ValueError, match="4 modality channels"):
        net(torch.randn(1, 3, 8, 8, 8), None)


def test_encode_fuse_decode_compose_to_forward() -> None:
    net = fine_seg.build_model({**TINY, "in_channels": 2}).eval()
    x, m = torch.randn(1, 2, 8, 12, 8), torch.tensor([[True, False]])
    with torch.no_grad():
        parts = net.decode(net.fuse(net.encode(net.prepare_input(x, m)), m))
        torch.testing.assert_close(parts, net(x, m))


def test_default_sizes_match_the_published_networks() -> None:
    # EfficientSegmentation reports ~9 MB (EfficientSegNet) and ~11 MB (BaseUNet) parameter files
    from pipeline.nn import count_parameters

    fine = count_parameters(fine_seg.build_model({"num_classes": 14}))
    coarse = count_parameters(coarse_seg.build_model({"num_classes": 14}))
    assert 7e6 < fine < 11e6 and 8e6 < coarse < 13e6
    with pytest.raises(ValueError, match="unknown keys"):
        fine_seg.build_model({"num_classs": 3})


def test_dry_run_flops_match_a_real_forward_and_cli(capsys) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from fine_seg.train import stage_spec
    from pipeline.cli import main
    from pipeline.commands.train import describe
    from pipeline.config import SegpipeConfig
    from pipeline.tasks import get_task

    cfg = SegpipeConfig.model_validate({"fine": {"model": {"channels": [4, 8, 16]}, "train": {"patch_size": [8, 16, 16]}}})
    spec = stage_spec(cfg, get_task("flare"))
    lines = describe(spec)
    flops_meta = float(lines[1].split("forward ")[1].split(" GFLOPs")[0])
    counter = FlopCounterMode(display=False)
    net = fine_seg.build_model(spec.model_config).eval()
    with counter, torch.no_grad():
        net(torch.randn(1, 1, 8, 16, 16))
    assert flops_meta == pytest.approx(counter.get_total_flops() / 1e9, abs=0.05)
    assert main(["train", "coarse", "--work", "/nonexistent", "--dry-run", "--config", "flare"]) == 0
    out = capsys.readouterr().out
    assert "CoarseUNet" in out and "GFLOPs" in out and "1×1×64×128×128" in out
    # the missing-modality networks' forward depends on the masks' values: parameters, and a line saying why no FLOPs
    assert main(["train", "fine", "--work", "/nonexistent", "--dry-run", "--config", "brats"]) == 0
    out = capsys.readouterr().out
    assert "MultiEncoderNet" in out and "M parameters" in out and "FLOPs not counted" in out


def test_export_round_trip_fp32_and_fp16(tmp_path) -> None:
    import json

    from safetensors.torch import save_file

    from pipeline.training.export import export_stage, load_stage

    cfg = {**TINY, "in_channels": 1}
    net = fine_seg.build_model(cfg).eval()
    src = tmp_path / "work" / "train" / "fine"
    src.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(src / "best.safetensors"))
    (src / "model_config.json").write_text(json.dumps({"stage": "fine", "model": cfg}))
    x = torch.randn(1, 1, 8, 8, 8)
    with torch.no_grad():
        ref = net(x)
    for fp16 in (False, True):
        w, j = export_stage(tmp_path / "work", "fine", tmp_path / f"out{fp16}", fp16=fp16)
        assert j.with_suffix(".safetensors") == w
        model, info = load_stage(w)
        assert info["dtype"] == ("float16" if fp16 else "float32") and info["model"] == cfg
        with torch.no_grad():
            got = model(x)
        torch.testing.assert_close(got, ref, atol=(2e-2 if fp16 else 0), rtol=(2e-2 if fp16 else 0))
