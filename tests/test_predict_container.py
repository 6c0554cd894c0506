"""The submission contracts on a real engine with the shipped demo weights (issue #5).

FLARE exactly as the organisers call it (minus --gpus): fresh container, read-only input mount,
no network, the image's non-root user, docker's default 64 MB /dev/shm; then grand-challenge
(/input read-only → /output, read-only root, /tmp tmpfs) and the BraTS MLCube `infer` command
(as the orchestrator runs it: network none, a host uid). Outputs are checked from the host.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.inference.synthetic import write_brats_case, write_flare_case

pytestmark = pytest.mark.docker


def _run(client, image: str, command, **kwargs) -> tuple[int, str]:
    kwargs.setdefault("network_mode", "none")
    container = client.containers.run(image, command, detach=True, **kwargs)
    try:
        code = container.wait(timeout=600)["StatusCode"]
        logs = container.logs(stdout=True, stderr=True).decode()
    finally:
        container.remove(force=True)
    return code, logs


def _dirs(tmp_path: Path, inputs: str, outputs: str) -> tuple[Path, Path]:
    i, o = tmp_path / inputs, tmp_path / outputs
    i.mkdir(parents=True)
    o.mkdir(parents=True)
    o.chmod(0o777)  # the container's uid writes here; the test may run as another user
    return i, o


def _same_grid(pred_path: Path, src_path: Path) -> np.ndarray:
    pred, src = sitk.ReadImage(str(pred_path)), sitk.ReadImage(str(src_path))
    assert pred.GetPixelID() == sitk.sitkUInt8
    assert pred.GetSize() == src.GetSize() and pred.GetSpacing() == src.GetSpacing()
    assert np.allclose(pred.GetOrigin(), src.GetOrigin(), atol=1e-4)
    assert np.allclose(pred.GetDirection(), src.GetDirection(), atol=1e-6)
    return sitk.GetArrayFromImage(pred)


def test_flare_command_line(docker_client, segpipe_image, tmp_path):
    inputs, outputs = _dirs(tmp_path, "inputs", "outputs")
    write_flare_case(inputs / "FLARE22_Ts_0042_0000.nii.gz", None, seed=4242, orientation="ras")
    code, logs = _run(docker_client, segpipe_image, ["/bin/bash", "-c", "sh predict.sh"],
                      volumes={str(inputs): {"bind": "/workspace/inputs", "mode": "ro"},
                               str(outputs): {"bind": "/workspace/outputs", "mode": "rw"}})
    assert code == 0, logs
    assert [p.name for p in outputs.iterdir()] == ["FLARE22_Ts_0042.nii.gz"]
    labels = _same_grid(outputs / "FLARE22_Ts_0042.nii.gz", inputs / "FLARE22_Ts_0042_0000.nii.gz")
    assert labels.any() and labels.max() <= 13


def test_grand_challenge_layout(docker_client, segpipe_image, tmp_path):
    inputs, outputs = _dirs(tmp_path, "input", "output")
    uuid = "0f0e0d0c-0b0a-4909-8807-060504030201"
    src = inputs / "images" / "ct" / f"{uuid}.mha"
    write_flare_case(src, None, seed=4243, orientation="permuted")
    code, logs = _run(docker_client, segpipe_image, ["segpipe", "predict", "-i", "/input", "-o", "/output"],
                      volumes={str(inputs): {"bind": "/input", "mode": "ro"},
                               str(outputs): {"bind": "/output", "mode": "rw"}},
                      read_only=True, tmpfs={"/tmp": ""})
    assert code == 0, logs
    labels = _same_grid(outputs / "images" / "ct" / f"{uuid}.mha", src)
    assert labels.any()


def test_mlcube_infer(docker_client, segpipe_image, tmp_path):
    data, out = _dirs(tmp_path, "mlcube_io0", "mlcube_io2")
    params = tmp_path / "mlcube_io3"
    params.mkdir()
    (params / "parameters.yaml").write_text("label_convention: legacy\n")
    write_brats_case(data / "BraTS-GLI-00042-000", 4244, modalities=("flair", "t1ce", "t2"), label=False)
    user = f"{os.getuid()}:{os.getgid()}" if os.getuid() != 0 else "1000:1000"
    code, logs = _run(docker_client, segpipe_image,
                      ["infer", "--data_path=/mlcube_io0", "--output_path=/mlcube_io2",
                       "--parameters_file=/mlcube_io3/parameters.yaml"],
                      volumes={str(data): {"bind": "/mlcube_io0", "mode": "ro"},
                               str(out): {"bind": "/mlcube_io2", "mode": "rw"},
                               str(params): {"bind": "/mlcube_io3", "mode": "ro"}},
                      user=user, shm_size="2gb")
    assert code == 0, logs
    labels = _same_grid(out / "BraTS-GLI-00042-000.nii.gz", data / "BraTS-GLI-00042-000" / "BraTS-GLI-00042-000-t2f.nii.gz")
    assert set(np.unique(labels).tolist()) <= {0, 1, 2, 4}
