"""BraTS MLCube files: `mlcube.yaml` (image + the `infer` task) and `workspace/parameters.yaml`.

The image needs no entrypoint: MLCube and the BraTS orchestrator run
`infer --data_path=… --output_path=… [--parameters_file=…]`, and `infer` is segpipe's console
script on the image's PATH (pipeline.commands.predict:infer_main).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.fsutil import atomic_write_text


def mlcube_spec(image: str, *, name: str, gpus: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "description": "segpipe BraTS segmentation (coarse -> ROI -> fine, any subset of t1c/t1n/t2f/t2w)",
        "authors": [{"name": name}],
        "platform": {"accelerator_count": 1 if gpus else 0},
        # the image is built by `segpipe package` (or loaded from its tarball): nothing to build here
        "docker": {"image": image, **({"gpu_args": "--gpus=all"} if gpus else {})},
        "tasks": {"infer": {"parameters": {
            "inputs": {"data_path": {"type": "directory", "default": "data"},
                       "parameters_file": {"type": "file", "default": "parameters.yaml"}},
            "outputs": {"output_path": {"type": "directory", "default": "predictions"}},
        }}},
    }


def parameters(label_convention: str = "2023", device: str = "auto") -> dict[str, Any]:
    """What `infer --parameters_file` reads (see pipeline.commands.predict.read_parameters)."""
    return {"device": device, "on_error": "empty", "label_convention": label_convention}


def write_mlcube(folder: str | Path, image: str, *, name: str, label_convention: str = "2023",
                 gpus: bool = True) -> tuple[Path, Path]:
    folder = Path(folder)
    cube, params = folder / "mlcube.yaml", folder / "workspace" / "parameters.yaml"
    atomic_write_text(cube, yaml.safe_dump(mlcube_spec(image, name=name, gpus=gpus), sort_keys=False))
    atomic_write_text(params, yaml.safe_dump(parameters(label_convention), sort_keys=False))
    return cube, params
