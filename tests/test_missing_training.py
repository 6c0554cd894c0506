"""Missing-modality methods, end to end on tiny volumes: the multi-encoder network (mean
substitution, per-sample independence, export round trip), each method's training step, and
the trainer running every method (LCKD elections, PASSION β, HGA groups) with resume state."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fine_seg.missing import build_method
from pipeline.config import SegpipeConfig, missing_settings
from pipeline.tasks import get_task

TINY = {"in_channels": 4, "num_classes": 4, "channels": [4, 8, 8], "blocks": 1, "decoder_blocks": 1,
        "context_reduction": 2, "deep_supervision": True}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net(method: str, **kw):
    from fine_seg import build_model

    torch.manual_seed(0)
    return build_model({**TINY, "method": method, "specific_encoders": method == "shaspec", **kw})


def _batch(b: int = 2, size: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, size, size, size, generator=g)
    target = torch.randint(0, 4, (b, size, size, size), generator=g)
    return x, target


@pytest.mark.parametrize("method", ["shaspec", "lckd"])
def test_missing_channels_are_ignored_and_samples_are_independent(method: str) -> None:
    net = _net(method).eval()
    x, _ = _batch(3)
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]], dtype=torch.bool)
    out = net(x, mask)
    x2 = x.clone()
    x2[0, 1] = 50.0  # garbage in a missing channel
    assert torch.allclose(net(x2, mask), out, atol=1e-5)
    # a sample's prediction does not depend on the other samples' masks (PASSION batches them)
    assert torch.allclose(net(x[1:2], mask[1:2]), out[1:2], atol=1e-5)
    with pytest.raises(ValueError, match="at least one"):
        net(x[:1], torch.zeros(1, 4, dtype=torch.bool))


def test_method_weights_rebuild_through_fine_seg_build_model() -> None:
    from fine_seg import build_model

    net = _net("shaspec", specific_channels=[2, 4, 4])
    again = build_model({**TINY, "method": "shaspec", "specific_encoders": True, "specific_channels": [2, 4, 4]})
    again.load_state_dict(net.state_dict(), strict=True)
    plain = build_model({**TINY, "method": "plain"})
    assert type(plain).__name__ == "EfficientSegNet"


def _forward(net):
    return lambda x, m: net(x, m, aux=True)


@pytest.mark.parametrize("method", ["shaspec", "lckd", "passion", "hga"])
def test_each_method_step_backpropagates(method: str) -> None:
    extra = {"warmup_fraction": 0.0} if method in ("shaspec", "lckd") else {}
    hooks = build_method(method, missing_settings(method, **extra), num_classes=4)
    net = _net(method).train()
    x, target = _batch(3)
    avail = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    res = hooks.step(_forward(net), x, avail, target, global_step=5, total_steps=10, epoch=0, step=5)
    # the loss is the method's definition: supervised term + its weighted auxiliary terms
    st, sup, p = hooks.s, float(res.sup.detach()), res.parts
    expected = {"shaspec": lambda: sup + st.align_weight * p["align"] + st.cls_weight * p["cls"],
                "lckd": lambda: sup + st.distill_weight * p["kd"],
                "passion": lambda: sup + p["sep"] + st.kl_weight * p["kl"] + st.proto_weight * p["proto"],
                "hga": lambda: sup + p["sep"] + st.kl_weight * p["kl"] + st.proto_weight * p["proto"]}[method]()
    assert float(res.loss.detach()) == pytest.approx(expected, rel=1e-5)
    res.loss.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.8 * len(grads)
    expected = {"shaspec": {"align", "cls"}, "lckd": {"kd"}, "passion": {"sep", "kl", "proto"},
                "hga": {"sep", "kl", "proto"}}[method]
    assert set(res.parts) == expected
    if method in ("passion", "hga"):
        assert res.parts["kl"] > 0 and hooks.seen.tolist() == [2, 2, 2, 2]
        assert all(d for i, d in enumerate(hooks.epoch_dist) if i in (0, 2, 3))  # students of case 0 and 2


def test_passion_single_modality_cases_have_no_students() -> None:
    hooks = build_method("passion", missing_settings("passion"), num_classes=4)
    net = _net("passion").train()
    x, target = _batch(2)
    calls = []

    def fwd(xx, mm):
        calls.append(xx.shape[0])
        return net(xx, mm, aux=True)

    res = hooks.step(fwd, x, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.bool), target,
                     global_step=0, total_steps=1, epoch=0, step=0)
    assert calls == [2] and res.parts["kl"] == 0.0
    calls.clear()
    hooks.step(fwd, x, torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool), target,
               global_step=0, total_steps=1, epoch=0, step=0)
    assert calls == [4]  # one batched forward: 2 teachers + 2 students of case 0


def _source(n_train: int = 6, n_val: int = 2, size: int = 10):
    from fine_seg.missing.subsets import imbalanced_masks
    from pipeline.training.data import MemorySample, MemorySource

    rng = np.random.default_rng(0)
    ids = [f"c{i}" for i in range(n_train + n_val)]
    masks = imbalanced_masks(ids[:n_train], {"flair": 0.5, "t2": 0.5}, seed=0)
    samples = {}
    for i, cid in enumerate(ids):
        label = np.zeros((size,) * 3, np.uint8)
        c = 2 + i % 4
        label[c:c + 4, c:c + 4, c:c + 4] = 2
        label[c + 1:c + 3, c + 1:c + 3, c + 1:c + 3] = 3
        label[c + 2, c + 2, c + 2] = 1
        image = rng.normal(0, 0.1, (4, size, size, size)).astype(np.float32) + (label > 0)[None] * np.array(
            [1.0, 0.3, 0.0, 0.8], np.float32)[:, None, None, None] + (label == 3)[None] * np.array(
            [0, 0, 1.5, 0], np.float32)[:, None, None, None]
        m = masks.get(cid, np.ones(4, bool))
        samples[cid] = MemorySample(image * m[:, None, None, None], label, m)
    return MemorySource(samples, {"train": ids[:n_train], "val": ids[n_train:]})


METHOD_SETTINGS = {"shaspec": {"warmup_fraction": 0.25}, "lckd": {"elect_every": 1, "warmup_fraction": 0.25},
                   "passion": {}, "hga": {}}


@pytest.mark.parametrize("method", ["shaspec", "lckd", "passion", "hga"])
def test_trainer_runs_each_method_and_keeps_its_state(method: str, tmp_path) -> None:
    from fine_seg.missing.subsets import all_subsets
    from fine_seg.train import stage_spec
    from pipeline.training.export import export_stage, load_stage
    from pipeline.training.trainer import train_stage

    iters = 8 if method == "hga" else 2
    cfg = SegpipeConfig.model_validate({
        "task": {"name": "brats"}, "prepare": {"fine_size": [10, 10, 10]},
        "fine": {"method": method, "model": {"channels": [4, 8, 8], "blocks": 1, "deep_supervision": True},
                 "train": {"epochs": 2, "iters_per_epoch": iters, "batch_size": 2},
                 "missing": METHOD_SETTINGS[method]},
        "train": {"augment": {"enabled": False}, "num_threads": 1, "warmup_epochs": 0},
    })
    spec = stage_spec(cfg, get_task("brats"))
    assert spec.method is not None and spec.model_config["method"] == method
    source = _source()
    drawn: list[str] = []
    summary = train_stage(spec, source, cfg.train, tmp_path / "train" / "fine",
                          callbacks=[lambda ev, info: drawn.extend(info["cases"]) if ev == "step" else None])
    assert summary["epoch"] == 2 and len(drawn) == 2 * iters * 2
    metrics = json.loads((tmp_path / "train" / "fine" / "summary.json").read_text())["metrics"]
    state = json.loads((tmp_path / "train" / "fine" / "checkpoints" / "epoch_0002" / "state.json").read_text())
    parts = metrics[-1]["method"]
    names = ("flair", "t1", "t1ce", "t2")
    if method == "shaspec":
        assert {"align", "cls"} <= set(parts) and state["method"] == {}
    if method == "lckd":  # the teachers are the union of the per-region winners, by name in the log
        elected = state["method"]["elected"]
        assert set(elected) == {"ET", "TC", "WT"}
        assert state["method"]["teachers"] == sorted(set(elected.values()))
        assert parts["teachers"] == [names[t] for t in state["method"]["teachers"]]
    if method in ("passion", "hga"):
        beta = state["method"]["beta"]
        assert np.linalg.norm(beta) == pytest.approx(cfg.fine.missing.beta_norm)
        assert parts["beta"] == [round(b, 4) for b in beta]
    if method == "passion":  # samples seen per modality: the availability of the cases drawn
        avail = np.stack([source.load(c).modality_mask for c in drawn])
        assert state["method"]["seen"] == avail.sum(0).tolist()
    if method == "hga":  # one group per step; a cycle of 15 visits every group that has cases
        assert sum(state["method"]["visits"]) == 2 * iters
        assert sum(v > 0 for v in state["method"]["visits"]) >= min(len(all_subsets(4)), 2 * iters) - 2
    w, _ = export_stage(tmp_path, "fine", tmp_path / "weights")
    model, info = load_stage(w)
    assert type(model).__name__ == "MultiEncoderNet" and info["model"]["method"] == method
    # model selection: the recorded best score is the 15-subset mean Dice of the subset evaluation
    best = json.loads((tmp_path / "train" / "fine" / "best.json").read_text())
    assert best["val_dice"] == pytest.approx(_subset_mean(model, source), abs=1e-9)


@pytest.mark.parametrize("stage", ["coarse", "fine"])
def test_modality_dropout_stages_select_by_the_subset_mean(stage: str, tmp_path) -> None:
    """The plain coarse/fine network trained on random modality subsets keeps the checkpoint that
    is best over the 15 subsets (what a localiser/segmenter must work on), not on all four."""
    import importlib

    from pipeline.training.export import export_stage, load_stage
    from pipeline.training.trainer import train_stage

    size = [10, 10, 10]
    cfg = SegpipeConfig.model_validate({
        "task": {"name": "brats"}, "prepare": {"coarse_size": size, "fine_size": size},
        stage: {"model": {"channels": [4, 8, 8], "blocks": 1}, "modality_dropout": 1.0,
                "train": {"epochs": 2, "iters_per_epoch": 2, "batch_size": 2}},
        "train": {"augment": {"enabled": False}, "num_threads": 1, "warmup_epochs": 0},
    })
    spec = importlib.import_module(f"{stage}_seg.train").stage_spec(cfg, get_task("brats"))
    assert spec.scorer is not None and "15 modality subsets" in spec.info["model_selection"]
    source = _source()
    train_stage(spec, source, cfg.train, tmp_path / "train" / stage)
    model, _ = load_stage(export_stage(tmp_path, stage, tmp_path / "weights")[0])
    best = json.loads((tmp_path / "train" / stage / "best.json").read_text())
    assert best["val_dice"] == pytest.approx(_subset_mean(model, source), abs=1e-9)


def _subset_mean(model, source) -> float:
    """Mean over ET/TC/WT of `evaluation.subsets`' mean over the 15 subsets, run here on the model."""
    from evaluation.subsets import SubsetCase, evaluate_subsets

    def predict(case, mask):
        with torch.no_grad():
            out = model(torch.from_numpy(case.data)[None], torch.from_numpy(mask)[None])
        return out.argmax(1)[0].numpy().astype(np.uint8)

    cases = [SubsetCase(c, source.load(c).label, (1.0, 1.0, 1.0), source.load(c).modality_mask,
                        np.asarray(source.load(c).image, np.float32)) for c in source.case_ids("val")]
    res = evaluate_subsets(predict, cases, hd95=False)
    assert len(res["subsets"]) == 15 and not res["failed"]
    return float(np.mean([v["dice"] for v in res["mean_over_subsets"].values()]))


def test_passion_kl_is_weighted_by_beta_times_modal_weight() -> None:
    """PASSION's train.py: kl = Σ_m β_m · modal_weight_m · KL_m (segpipe ignored the modal weight)."""
    net = _net("passion").train()
    x, target = _batch(2)
    avail = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1]], dtype=torch.bool)

    def kl(beta, weights) -> float:
        hooks = build_method("passion", missing_settings("passion"), num_classes=4)
        hooks.beta = list(beta)
        hooks.modal_weights = lambda: np.asarray(weights, float)
        torch.manual_seed(0)
        res = hooks.step(_forward(net), x, avail, target, global_step=0, total_steps=1, epoch=0, step=0)
        return res.parts["kl"]

    for m in range(4):
        one = [float(i == m) for i in range(4)]
        assert kl(one, [1, 2, 3, 4]) == pytest.approx((m + 1) * kl(one, [1, 1, 1, 1]), rel=1e-5)
    assert kl([0.5, 1, 1.5, 2], [1, 1, 1, 1]) == pytest.approx(
        sum(b * kl([float(i == m) for i in range(4)], [1, 1, 1, 1]) for m, b in enumerate([0.5, 1, 1.5, 2])), rel=1e-5)


def test_passion_relative_preference_comes_from_the_current_batch() -> None:
    from fine_seg.missing.passion import Passion

    # case 0: students flair/t1 with discrepancies 0.1/0.3 → rp −0.5/+0.5; case 1: t1 and t2 equal → 0
    dist = [[0.1, 0.3, None, None], [None, 0.1, None, 0.1]]
    assert Passion.under_aligned(dist) == [False, True, False, False]
    assert Passion.under_aligned([[None] * 4]) == [False] * 4  # no students: nothing is gated in


def test_hga_modal_weights_are_one() -> None:
    hooks = build_method("hga", missing_settings("hga"), num_classes=4)
    hooks.seen = np.array([10, 200, 30, 5])
    assert hooks.modal_weights().tolist() == [1.0, 1.0, 1.0, 1.0]
    passion = build_method("passion", missing_settings("passion"), num_classes=4)
    passion.seen = np.array([10, 20, 40, 10])
    w = passion.modal_weights()  # inverse frequency, mean 1
    assert w.mean() == pytest.approx(1.0) and w[0] == pytest.approx(2 * w[1]) == pytest.approx(4 * w[2])


def test_hga_resume_mid_cycle_is_bit_exact(tmp_path) -> None:
    """A checkpoint every 8 steps cuts HGA's 15-step Reptile cycles: the resumed run must
    interpolate towards the anchor saved with the checkpoint, not the weights at the resume."""
    from safetensors.torch import load_file

    from fine_seg.train import stage_spec
    from pipeline.training.trainer import train_stage

    class Stop(Exception):
        pass

    def stop_after_first_epoch(event: str, info: dict) -> None:
        if event == "epoch_end" and info["epoch"] == 1:
            raise Stop

    def run(out, resume: bool = False, callbacks=()) -> dict:
        cfg = SegpipeConfig.model_validate({
            "task": {"name": "brats"}, "prepare": {"fine_size": [10, 10, 10]},
            "fine": {"method": "hga", "model": {"channels": [4, 8, 8], "blocks": 1, "deep_supervision": True},
                     "train": {"epochs": 3, "iters_per_epoch": 8, "batch_size": 2},
                     "missing": {"reptile_eps": [0.1, 1.0]}},
            "train": {"augment": {"enabled": False}, "num_threads": 1, "warmup_epochs": 0, "val_every": 10,
                      "deterministic": True},
        })
        train_stage(stage_spec(cfg, get_task("brats")), _source(), cfg.train, out, resume=resume, callbacks=callbacks)
        return load_file(str(out / "checkpoints" / "epoch_0003" / "model.safetensors"))

    straight = run(tmp_path / "a")
    with pytest.raises(Stop):
        run(tmp_path / "b", callbacks=[stop_after_first_epoch])
    assert (tmp_path / "b" / "checkpoints" / "epoch_0001" / "method.safetensors").exists()
    resumed = run(tmp_path / "b", resume=True)
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)


def test_method_config_errors() -> None:
    from fine_seg.train import stage_spec
    from pipeline.config import validate_config
    from pipeline.errors import ConfigError
    from pipeline.tasks import TaskSpec

    with pytest.raises(ConfigError, match="multi-modal"):
        validate_config({"fine": {"method": "shaspec"}}, "test")  # the default task is FLARE (CT only)
    cfg = SegpipeConfig.model_validate({"task": {"name": "brats"}, "fine": {"method": "shaspec"}})
    with pytest.raises(ConfigError, match="multi-modal"):
        stage_spec(cfg, TaskSpec("toy", "ct", ("ct",), {1: "a"}))  # a single-input task spec
    bad = {
        "cps": {"fine": {"method": "lckd"}, "train": {"cps": {"enabled": True}}},
        "mask_channels": {"fine": {"method": "passion", "model": {"mask_channels": True}}},
        "elect_every": {"fine": {"method": "passion", "missing": {"elect_every": 3}}},  # an LCKD key
        "differs": {"fine": {"method": "hga", "missing": {"method": "passion"}}},
        "plain": {"fine": {"missing": {"temperature": 2.0}}},
        "modality_dropout": {"fine": {"method": "shaspec", "modality_dropout": 0.5}},
    }
    for match, fine in bad.items():
        with pytest.raises(ConfigError, match=match):
            validate_config({"task": {"name": "brats"}, **fine}, "test")
    with pytest.raises(ConfigError, match="multi-modal"):
        validate_config({"coarse": {"modality_dropout": 0.3}}, "test")
    with pytest.raises(ConfigError, match=r"uif\.enabled needs cps"):
        validate_config({"train": {"uif": {"enabled": True}}}, "test")
    # every method's own defaults, in its settings model
    protos = {m: validate_config({"task": {"name": "brats"}, "fine": {"method": m}}, "t").fine.missing
              for m in ("passion", "hga")}
    assert protos["passion"].proto_weight == 0.1 and protos["hga"].proto_weight == 0.02


def test_shaspec_keeps_every_parameter_in_the_graph() -> None:
    """DDP (find_unused_parameters=False) fails if a specific encoder sits out a step."""
    net = _net("shaspec").train()
    x, _ = _batch(2)
    out = net(x, torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool), aux=True)
    (sum(lg.sum() for lg in out["logits"]) + out["modality_logits"].sum()).backward()
    assert all(p.grad is not None for p in net.parameters())
