"""One network forward on the CPU per runtime: torch (oneDNN fp32, bf16 autocast) beside OpenVINO
(f32, bf16) and ONNX Runtime (fp32, when installed). Medians; max |Δ| and argmax agreement with
torch fp32.

    .venv/bin/python bench/cpu_runtimes.py [--stage fine|coarse] [--threads 2] [--config configs/flare.yaml]

The network is the one the config trains for the stage, randomly initialised (the forward's cost
does not depend on the values), on the stage's whole sample (fine_size / coarse_size). This is
the network alone: `bench/predict.py --runtime torch,openvino` times the whole process, where
reading, resampling, upsampling and process start count too.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class _Ct(nn.Module):
    """The network with an all-present modality mask: one input, as an exported graph takes it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, torch.ones(x.shape[0], 1, dtype=torch.bool))


def median_s(fn, runs: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up (and the output for the agreement)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=["coarse", "fine"], default="fine")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--config", default=str(ROOT / "configs" / "flare.yaml"))
    args = ap.parse_args()

    from coarse_seg.train import stage_spec as coarse_spec
    from fine_seg.train import stage_spec as fine_spec
    from pipeline.config import load_config
    from pipeline.inference.cpu_conv import use_onednn
    from pipeline.inference.openvino_net import convert, openvino_available
    from pipeline.tasks import get_task

    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    spec = (fine_spec if args.stage == "fine" else coarse_spec)(config, get_task(config.task.name))
    size = config.prepare.fine_size if args.stage == "fine" else config.prepare.coarse_size
    from pipeline.training.export import build_stage_model

    torch.manual_seed(0)
    net = build_stage_model(spec.name, spec.model_config).eval()
    x = torch.randn(1, 1, *size)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    print(f"{args.stage} network of {Path(args.config).name}: {params:.1f} M parameters, input {list(x.shape)}, "
          f"{args.threads} threads, median of {args.runs}")
    results: dict[str, tuple[float, torch.Tensor]] = {}
    onnx = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(_Ct(net), (x,), onnx, dynamo=False, opset_version=17)
    ov_model = convert(net, list(x.shape[1:]), torch.ones(1, dtype=torch.bool).numpy()) if openvino_available() else None
    use_onednn(net)  # what predict's torch path runs (after the exports: it does not trace)
    with torch.inference_mode():
        results["torch fp32 (oneDNN)"] = median_s(lambda: _Ct(net)(x).float(), args.runs)

        def bf16() -> torch.Tensor:
            with torch.autocast("cpu", torch.bfloat16):
                return _Ct(net)(x).float()

        results["torch bf16 autocast"] = median_s(bf16, args.runs)
    if ov_model is not None:
        import openvino as ov

        for precision in ("f32", "bf16"):
            request = ov.Core().compile_model(ov_model, "CPU", {
                "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": args.threads,
                "PERFORMANCE_HINT": "LATENCY"}).create_infer_request()
            results[f"OpenVINO {precision}"] = median_s(lambda r=request: torch.from_numpy(r.infer({0: x.numpy()})[0].copy()),
                                                        args.runs)
    try:
        import onnxruntime as ort
    except ImportError:
        print("ONNX Runtime: not installed (pip install onnxruntime)")
    else:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
        session = ort.InferenceSession(onnx.getvalue(), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        results["ONNX Runtime fp32"] = median_s(lambda: torch.from_numpy(session.run(None, {name: x.numpy()})[0]),
                                                args.runs)
    reference = results["torch fp32 (oneDNN)"][1]
    for name, (seconds, out) in results.items():
        agree = float((out.argmax(1) == reference.argmax(1)).float().mean())
        print(f"{name:22s} {seconds:6.2f} s   max |Δ| vs torch fp32 {float((out - reference).abs().max()):.3g}, "
              f"argmax agreement {agree:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
