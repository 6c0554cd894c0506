"""The 15-subset evaluation table (evaluation/subsets.py) and its CLI entry."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from evaluation.subsets import SubsetCase, csv_text, evaluate_subsets, markdown_table, write_outputs


def _label() -> np.ndarray:
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[2:8, 2:8, 2:8] = 2
    lab[3:7, 3:7, 3:7] = 3
    lab[4:6, 4:6, 4:6] = 1
    return lab


def _cases() -> list[SubsetCase]:
    full = np.ones(4, bool)
    no_t2 = np.array([1, 1, 1, 0], bool)
    return [SubsetCase("a", _label(), (1.0, 1.0, 1.0), full), SubsetCase("b", _label(), (1.0, 1.0, 1.0), no_t2)]


def test_perfect_with_t1ce_else_whole_tumour_only() -> None:
    def predict(case: SubsetCase, mask: np.ndarray) -> np.ndarray:
        if mask[2]:
            return case.label.copy()
        return (case.label > 0).astype(np.uint8) * 2  # edema everywhere: WT right, ET/TC empty

    res = evaluate_subsets(predict, _cases())
    rows = res["subsets"]
    assert len(rows) == 15 and next(iter(rows)) == "flair" and list(rows)[-1] == "flair+t1+t1ce+t2"
    assert rows["t1ce"]["mean"]["ET"] == {"dice": 1.0, "hd95": 0.0}
    assert rows["flair"]["mean"]["ET"]["dice"] == 0.0 and rows["flair"]["mean"]["ET"]["hd95"] == 374.0
    assert rows["flair"]["mean"]["WT"]["dice"] == 1.0
    # case b has no t2: it is left out of every subset with t2, kept in the others
    assert rows["t2"]["n_cases"] == 1 and rows["flair+t1"]["n_cases"] == 2
    # mean over subsets: 8 of 15 subsets contain t1ce
    assert res["mean_over_subsets"]["ET"]["dice"] == pytest.approx(8 / 15)
    assert res["mean_over_subsets"]["WT"]["dice"] == pytest.approx(1.0)
    assert not res["failed"]


def test_a_failing_case_is_recorded_and_the_rest_scored(tmp_path) -> None:
    def predict(case: SubsetCase, mask: np.ndarray) -> np.ndarray:
        if case.case_id == "b" and mask[0]:
            raise RuntimeError("boom")
        return case.label.copy()

    res = evaluate_subsets(predict, _cases(), hd95=False)
    assert {f["case"] for f in res["failed"]} == {"b"} and len(res["failed"]) == 4  # flair subsets without t2
    assert res["mean_over_subsets"]["TC"]["dice"] == 1.0 and res["mean_over_subsets"]["TC"]["hd95"] is None
    write_outputs(res, json_path=tmp_path / "r.json", markdown_path=tmp_path / "r.md", csv_path=tmp_path / "r.csv")
    assert json.loads((tmp_path / "r.json").read_text())["subsets"]["t1"]["n_cases"] == 2
    md = (tmp_path / "r.md").read_text().splitlines()
    assert len(md) == 2 + 15 + 1 and md[0].startswith("| flair | t1 | t1ce | t2 | n | Dice ET")
    assert md[-1].startswith("| **mean**")
    rows = list(csv.reader(io.StringIO(csv_text(res))))
    assert rows[0][:3] == ["subset", "case", "ET_dice"] and rows[-1][:2] == ["all", "mean_over_subsets"]
    assert markdown_table(res) == (tmp_path / "r.md").read_text()


def test_cli_subsets_needs_data(capsys) -> None:
    from pipeline.cli import main

    assert main(["evaluate", "brats", "--subsets", "all"]) != 0
    assert "--data" in capsys.readouterr().err
    assert main(["evaluate", "brats", "--subsets", "flair+t9", "--data", "."]) != 0


@pytest.mark.slow
def test_cli_subsets_runs_the_inference_pipeline_with_a_method_network(tmp_path, capsys) -> None:
    """A ShaSpec fine stage behind the real predictor; a case without t2 (as BraSyn drops a
    file) is scored on the subsets it can present and left out of those that need t2."""
    import torch
    from predict_fixtures import make_random_weights
    from safetensors.torch import save_file

    from fine_seg import build_model
    from pipeline.cli import main
    from pipeline.inference.synthetic import write_brats_case
    from pipeline.weights import read_manifest, write_manifest

    w = make_random_weights(tmp_path / "w", "brats", coarse_size=(16, 16, 16), fine_size=(16, 16, 16), fp16=False)
    info = json.loads((w / "fine.json").read_text())
    cfg = {**info["model"], "method": "shaspec", "specific_encoders": True, "specific_channels": [2, 4, 8]}
    torch.manual_seed(0)
    net = build_model(cfg)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(w / "fine.safetensors"))
    (w / "fine.json").write_text(json.dumps({**info, "model": cfg}))
    write_manifest(w, name="w", task="brats", preprocessing=read_manifest(w)["preprocessing"])
    write_brats_case(tmp_path / "data" / "BraTS-GLI-00000-000", 1, modalities=("flair", "t1", "t1ce"))
    out = tmp_path / "out"
    rc = main(["evaluate", "brats", "--subsets", "flair,t2,flair+t1+t1ce", "--data", str(tmp_path / "data"), "--weights", str(w),
               "--device", "cpu", "--json", str(out / "s.json"), "--markdown", str(out / "s.md"),
               "--csv", str(out / "s.csv")])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "s.json").read_text())
    counts = {name: row["n_cases"] for name, row in res["subsets"].items()}
    assert counts == {"flair": 1, "t2": 0, "flair+t1+t1ce": 1} and res["subsets_without_cases"] == ["t2"]
    assert not res["failed"] and (out / "s.md").is_file() and (out / "s.csv").is_file()
    assert "| **mean**" in capsys.readouterr().out
