"""`segpipe package`: names, MLCube files, the build context; the real build + smoke run on an engine."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest
import yaml

from pipeline.errors import SegpipeError
from pipeline.submission.image import WEIGHTS_IN_IMAGE, dockerfile, save_image, team_name
from pipeline.submission.mlcube import write_mlcube

ROOT = Path(__file__).resolve().parent.parent


def test_team_name_is_lowercased_and_checked():
    assert team_name("MyTeam") == "myteam"
    assert team_name(" Blackbean_2 ") == "blackbean_2"
    for bad in ("", "team name", "../x", "Ümlaut"):
        with pytest.raises(SegpipeError, match="team name"):
            team_name(bad)


def test_mlcube_files(tmp_path):
    cube, params = write_mlcube(tmp_path / "mlcube", "myteam:latest", name="myteam", label_convention="legacy")
    assert cube == tmp_path / "mlcube" / "mlcube.yaml" and params == tmp_path / "mlcube" / "workspace" / "parameters.yaml"
    spec = yaml.safe_load(cube.read_text())
    assert spec["docker"] == {"image": "myteam:latest", "gpu_args": "--gpus=all"}
    assert cube.read_text().isascii()
    infer = spec["tasks"]["infer"]["parameters"]
    assert set(infer["inputs"]) == {"data_path", "parameters_file"}
    assert infer["inputs"]["parameters_file"]["default"] == "parameters.yaml"
    assert infer["outputs"]["output_path"]["type"] == "directory"
    p = yaml.safe_load(params.read_text())
    assert p == {"device": "auto", "on_error": "empty", "label_convention": "legacy"}
    # what `infer --parameters_file` accepts: no unknown sections
    from pipeline.commands.predict import read_parameters

    overrides = read_parameters(str(params))
    assert overrides == ['predict.device="auto"', 'predict.on_error="empty"', 'predict.label_convention="legacy"']


def test_dockerfile_bakes_weights_in_and_points_there():
    text = dockerfile("segpipe:dev", "flare_x", "flare")
    assert text.splitlines()[0] == "FROM segpipe:dev"
    assert f"COPY --chown=0:0 weights/ {WEIGHTS_IN_IMAGE}/flare_x/" in text
    assert f"ENV SEGPIPE_WEIGHTS={WEIGHTS_IN_IMAGE}" in text
    assert "USER" not in text  # the project image's non-root user stays in force


def test_package_no_image_verifies_weights(tmp_path, capsys):
    from pipeline.cli import main

    assert main(["package", "--task", "flare", "--weights", str(ROOT / "model_weights" / "flare_demo"), "--no-image"]) == 0
    assert main(["package", "--task", "brats", "--weights", str(ROOT / "model_weights" / "flare_demo"),
                 "--no-image"]) == 2
    assert "not 'brats'" in capsys.readouterr().err


@pytest.mark.docker
def test_save_image_writes_loadable_lowercase_tarball(docker_client, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "hello.txt").write_text("hi\n")
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    tag = f"{team_name('SegPipeTest')}:latest"
    docker_client.images.build(path=str(ctx), tag=tag, rm=True)
    try:
        dest = save_image(docker_client, tag, tmp_path / "segpipetest.tar.gz")
        with gzip.open(dest) as gz, tarfile.open(fileobj=io.BytesIO(gz.read())) as tar:
            manifest = json.loads(tar.extractfile("manifest.json").read())
        assert manifest[0]["RepoTags"] == ["segpipetest:latest"]
    finally:
        docker_client.images.remove(tag, force=True)


@pytest.mark.docker
@pytest.mark.parametrize("task", ["flare", "brats"])
def test_package_builds_and_smoke_runs(docker_client, segpipe_image, tmp_path, monkeypatch, capsys, task):
    """The real thing: FROM the project image + the demo weights, one synthetic case through the
    organisers' entry (FLARE `sh predict.sh`, BraTS MLCube `infer` with t1n missing) without
    network as uid 1000, output checked against the contract."""
    from pipeline.cli import main

    monkeypatch.setenv("SEGPIPE_IMAGE", segpipe_image)
    try:
        rc = main(["package", "--task", task, "--weights", str(ROOT / "model_weights" / f"{task}_demo"),
                   "--team", "SegPipeCI", "--out", str(tmp_path / "sub"), "--no-save", "--user", "1000:1000"])
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "smoke run of segpipeci:latest passed (1 case(s)" in out
        assert (tmp_path / "sub" / "mlcube" / "mlcube.yaml").is_file() == (task == "brats")
        image = docker_client.images.get("segpipeci:latest")
        assert image.labels["org.segpipe.task"] == task
        assert f"SEGPIPE_WEIGHTS={WEIGHTS_IN_IMAGE}" in image.attrs["Config"]["Env"]
        assert image.attrs["Config"]["User"] == "1000:1000"
    finally:
        import docker

        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove("segpipeci:latest", force=True)
