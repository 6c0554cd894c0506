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


def test_grand_challenge_dockerfile_stores_the_output_slug():
    text = dockerfile("segpipe:dev", "flare_x", "flare", "grand-challenge", "abdominal-organ-segmentation")
    assert "ENV SEGPIPE_GC_OUTPUT_SLUG=abdominal-organ-segmentation" in text
    assert 'org.segpipe.target="grand-challenge"' in text
    assert "CMD" not in text and "ENTRYPOINT" not in text  # the project image's `segpipe entry` stays the default


def test_model_tarball_has_the_weights_at_its_root_and_is_reproducible(tmp_path):
    from pipeline.submission.gc import model_tarball
    from pipeline.weights import find_weights, load_weights

    src = ROOT / "model_weights" / "flare_demo"
    a = model_tarball(src, tmp_path / "a" / "model.tar.gz")
    b = model_tarball(src, tmp_path / "b" / "model.tar.gz")
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        names = tar.getnames()
        assert "manifest.json" in names and all("/" not in n for n in names)
        tar.extractall(tmp_path / "opt-ml-model", filter="data")
    # what `segpipe entry` does with /opt/ml/model
    assert load_weights(find_weights(tmp_path / "opt-ml-model", "flare"), "cpu").task == "flare"


@pytest.mark.parametrize("target", ["grand-challenge", "brats2025"])
def test_no_command_smoke_run_payload(tmp_path, target):
    """The container is started as the platform starts it: no Cmd, no network, read-only /input,
    non-root; grand-challenge also read-only root with a /tmp tmpfs, the model at /opt/ml/model,
    and /dev/shm left at the default. The fake engine plays the container's part."""
    from fake_docker import FakeDockerEngine

    from pipeline.submission.image import smoke_run

    def play(engine, container):
        out = Path(container.binds["/output"])
        if target == "grand-challenge":
            (out / "images" / "seg").mkdir(parents=True)
            (out / "images" / "seg" / "x.mha").write_bytes(b"")
        else:
            (out / "BraTS-x.nii.gz").write_bytes(b"")

    model = tmp_path / "model"
    model.mkdir()
    with FakeDockerEngine(on_start=play) as engine:
        inputs, outputs, _ = smoke_run(engine.client(), "team:latest", target, tmp_path / "w", "1000:1000",
                                       model_dir=model if target == "grand-challenge" else None)
        create = engine.last("POST", "/containers/create").json
    assert create["Image"] == "team:latest" and not create.get("Cmd")
    assert create["User"] == "1000:1000"
    host = create["HostConfig"]
    assert host["NetworkMode"] == "none" and "ShmSize" not in host
    binds = set(host["Binds"])
    assert f"{inputs}:/input:ro" in binds and f"{outputs}:/output:rw" in binds
    if target == "grand-challenge":
        assert f"{model}:/opt/ml/model:ro" in binds
        assert host["ReadonlyRootfs"] is True and host["Tmpfs"] == {"/tmp": ""}
        manifest = json.loads((inputs / "inputs.json").read_text())
        slug = manifest[0]["socket"]["relative_path"].split("/")[1]
        images = list((inputs / "images" / slug).glob("*.mha"))
        assert len(images) == 1 and manifest[0]["image"]["name"] == images[0].name
    else:
        (case,) = [p for p in inputs.iterdir() if p.is_dir()]
        tags = sorted(p.name.rsplit("-", 1)[1] for p in case.iterdir())
        assert tags == ["t1c.nii.gz", "t2f.nii.gz", "t2w.nii.gz"]  # t1n left out on purpose, no seg


def test_package_target_must_fit_the_task(capsys):
    from pipeline.cli import main

    weights = str(ROOT / "model_weights" / "flare_demo")
    assert main(["package", "--task", "flare", "--target", "brats2025", "--weights", weights, "--no-image"]) == 2
    assert "--target brats2025 serves --task brats" in capsys.readouterr().err
    assert main(["package", "--task", "flare", "--target", "grand-challenge", "--weights", weights, "--no-image"]) == 2
    assert "needs --gc-output-slug" in capsys.readouterr().err


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
@pytest.mark.parametrize(("task", "target"), [("flare", "flare"), ("brats", "mlcube"), ("flare", "grand-challenge"),
                                              ("brats", "brats2025")])
def test_package_builds_and_smoke_runs(docker_client, segpipe_image, tmp_path, monkeypatch, capsys, task, target):
    """The real thing: FROM the project image + the demo weights, one synthetic case through the
    platform's start (FLARE `sh predict.sh`, MLCube `infer` with t1n missing, grand-challenge and
    BraTS 2025 with no command, /input read-only; grand-challenge also with a read-only root, the
    model tarball at /opt/ml/model and only /tmp writable) without network as uid 1000, output
    checked against the contract (grand-challenge: images/<slug>/<uuid>.mha in the input grid)."""
    from pipeline.cli import main

    monkeypatch.setenv("SEGPIPE_IMAGE", segpipe_image)
    extra = ["--gc-output-slug", "abdominal-organ-segmentation"] if target == "grand-challenge" else []
    try:
        rc = main(["package", "--task", task, "--target", target, *extra,
                   "--weights", str(ROOT / "model_weights" / f"{task}_demo"),
                   "--team", "SegPipeCI", "--out", str(tmp_path / "sub"), "--no-save", "--user", "1000:1000"])
        out = capsys.readouterr().out
        assert rc == 0, out
        assert f"smoke run of segpipeci:latest as {target} starts it passed (1 case(s)" in out
        assert (tmp_path / "sub" / "mlcube" / "mlcube.yaml").is_file() == (target == "mlcube")
        assert (tmp_path / "sub" / "model.tar.gz").is_file() == (target == "grand-challenge")
        image = docker_client.images.get("segpipeci:latest")
        assert image.labels["org.segpipe.task"] == task and image.labels["org.segpipe.target"] == target
        assert image.attrs["Config"]["Cmd"] == ["segpipe", "entry"]
        assert f"SEGPIPE_WEIGHTS={WEIGHTS_IN_IMAGE}" in image.attrs["Config"]["Env"]
        assert image.attrs["Config"]["User"] == "1000:1000"
    finally:
        import docker

        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove("segpipeci:latest", force=True)
