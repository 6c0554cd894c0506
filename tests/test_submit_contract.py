"""`segpipe submit`: the contract check catches each way a folder can be wrong, and archives a good one."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.cli import main
from pipeline.submission.contract import check_predictions


def _image(shape=(6, 8, 10), value=0, dtype=np.uint8, spacing=(1.5, 1.0, 2.0), origin=(1.0, 2.0, 3.0)):
    arr = np.full(shape, value, dtype=dtype)
    arr[1:3, 2:4, 3:5] = 1 if value == 0 else value
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    return img


@pytest.fixture
def flare(tmp_path: Path):
    inp, pred = tmp_path / "inputs", tmp_path / "pred"
    inp.mkdir()
    pred.mkdir()
    for case in ("FLARE22_Ts_0001", "FLARE22_Ts_0002"):
        sitk.WriteImage(sitk.Cast(_image(), sitk.sitkInt16), str(inp / f"{case}_0000.nii.gz"))
        sitk.WriteImage(_image(), str(pred / f"{case}.nii.gz"))
    return inp, pred


def test_good_folder_passes_and_zips(flare, tmp_path, capsys):
    inp, pred = flare
    assert check_predictions("flare", pred, inp).ok
    dest = tmp_path / "sub.zip"
    assert main(["submit", "--task", "flare", "--pred", str(pred), "--input", str(inp), "--zip", str(dest)]) == 0
    with zipfile.ZipFile(dest) as zf:
        assert zf.namelist() == ["FLARE22_Ts_0001.nii.gz", "FLARE22_Ts_0002.nii.gz"]
        assert zf.read("FLARE22_Ts_0001.nii.gz") == (pred / "FLARE22_Ts_0001.nii.gz").read_bytes()
    first = dest.read_bytes()
    main(["submit", "--task", "flare", "--pred", str(pred), "--input", str(inp), "--zip", str(dest)])
    assert dest.read_bytes() == first  # deterministic archive


@pytest.mark.parametrize("breakage, expected", [
    ("missing", "FLARE22_Ts_0002.nii.gz: missing (no prediction for input case FLARE22_Ts_0002)"),
    ("name", "FLARE22_Ts_0002_0000.nii.gz: matches no input case"),
    ("dtype", "FLARE22_Ts_0002.nii.gz: pixel type 32-bit float, expected an integer label image"),
    ("label", "FLARE22_Ts_0002.nii.gz: labels [14] are not in the task's label set"),
    ("geometry", "FLARE22_Ts_0002.nii.gz: geometry differs from FLARE22_Ts_0002_0000.nii.gz: spacing"),
    ("size", "FLARE22_Ts_0002.nii.gz: geometry differs from FLARE22_Ts_0002_0000.nii.gz: size"),
    ("extra", "notes.txt: not a .nii.gz file"),
])
def test_each_breakage_is_one_clear_line(flare, tmp_path, capsys, breakage, expected):
    inp, pred = flare
    target = pred / "FLARE22_Ts_0002.nii.gz"
    if breakage == "missing":
        target.unlink()
    elif breakage == "name":
        target.rename(pred / "FLARE22_Ts_0002_0000.nii.gz")
    elif breakage == "dtype":
        sitk.WriteImage(sitk.Cast(_image(), sitk.sitkFloat32), str(target))
    elif breakage == "label":
        sitk.WriteImage(_image(value=14), str(target))
    elif breakage == "geometry":
        sitk.WriteImage(_image(spacing=(1.5, 1.0, 2.5)), str(target))
    elif breakage == "size":
        sitk.WriteImage(_image(shape=(6, 8, 11)), str(target))
    elif breakage == "extra":
        (pred / "notes.txt").write_text("x")
    result = check_predictions("flare", pred, inp)
    assert any(p.startswith(expected) for p in result.problems), result.problems
    # the good case is never reported
    assert not any(p.startswith("FLARE22_Ts_0001") for p in result.problems)
    dest = tmp_path / "sub.zip"
    assert main(["submit", "--task", "flare", "--pred", str(pred), "--input", str(inp), "--zip", str(dest)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "nothing archived" in err
    assert not dest.exists()


def test_brats_layout_and_conventions(tmp_path):
    inp, pred = tmp_path / "in", tmp_path / "pred"
    cid = "BraTS-GLI-00001-000"
    (inp / cid).mkdir(parents=True)
    pred.mkdir()
    for tag in ("t1c", "t2f"):  # two of four modalities present: still one output expected
        sitk.WriteImage(_image(), str(inp / cid / f"{cid}-{tag}.nii.gz"))
    sitk.WriteImage(_image(value=3), str(pred / f"{cid}.nii.gz"))
    assert check_predictions("brats", pred, inp).ok
    legacy = check_predictions("brats", pred, inp, convention="legacy")
    assert any("labels [3]" in p for p in legacy.problems)


def test_grand_challenge_dry_run_and_upload_request(flare, tmp_path, capsys, monkeypatch):
    _, pred = flare
    monkeypatch.delenv("GC_TOKEN", raising=False)
    assert main(["submit", "--task", "flare", "--pred", str(pred), "--zip", str(tmp_path / "s.zip"),
                 "--grand-challenge", "--archive", "my-archive"]) == 0
    out = capsys.readouterr().out
    assert "dry run" in out and "2 file(s)" in out and "my-archive" in out

    from pipeline.submission.gc import UploadPlan, upload

    seen: dict = {"items": []}

    class FakeClient:
        def __init__(self, token, base_url):
            seen.update(token=token, base_url=base_url)

        def add_case_to_archive(self, archive_slug, values, title):
            seen["items"].append((archive_slug, values, title))
            return title

    def spec(socket_slug, file):
        return (socket_slug, Path(file).name)

    plan = UploadPlan("my-archive", sorted(pred.iterdir()), "http://127.0.0.1:9/api/v1/", "ct-image")
    assert upload(plan, None, FakeClient, spec) == [] and "token" not in seen  # no token: nothing constructed
    assert upload(plan, "tok", FakeClient, spec) == ["FLARE22_Ts_0001.nii.gz", "FLARE22_Ts_0002.nii.gz"]
    assert seen["token"] == "tok" and seen["base_url"] == "http://127.0.0.1:9/api/v1/"
    assert seen["items"][0] == ("my-archive", [("ct-image", "FLARE22_Ts_0001.nii.gz")], "FLARE22_Ts_0001.nii.gz")


def test_grand_challenge_real_client_talks_only_to_the_given_server(flare, tmp_path):
    """gcapi itself, pointed at a local HTTP server that refuses everything: every request goes
    to that server (never the network) and the refusal is one clear error."""
    pytest.importorskip("gcapi")
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pipeline.errors import SegpipeError
    from pipeline.submission.gc import UploadPlan, upload

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def _refuse(self):
            seen.append((self.command, self.path, self.headers.get("Authorization")))
            body = b'{"detail": "Not found."}'
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = _refuse

        def log_message(self, *a):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _, pred = flare
        plan = UploadPlan("my-archive", sorted(pred.iterdir()), f"http://127.0.0.1:{server.server_port}/api/v1/")
        with pytest.raises(SegpipeError, match=r"grand-challenge (API at http://127\.0\.0\.1|upload of FLARE22)"):
            upload(plan, "tok")
    finally:
        server.shutdown()
        server.server_close()
    assert seen and all(path.startswith("/api/v1/") for _, path, _ in seen)
    # gcapi's first call is its unauthenticated version check; the token never goes anywhere else
    assert {auth for _, _, auth in seen} <= {None, "Bearer tok"}
