"""The demo's upload folder and upload gate: a refused type never reaches the app (nor the disk), an accepted
one reaches it byte for byte; refused files are deleted from the folder, and only from it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from medmvl.apps.scans import UploadError, accepted, file_types, open_scan, scan_kind
from medmvl.apps.uploads import UploadFolder, UploadGate, forget_upload, part_file_name


def test_types_offered_and_refused_follow_the_models_towers() -> None:
    assert file_types(("2d",)) == [".png", ".jpg", ".jpeg", ".dcm", ".dicom"]
    assert file_types(("3d",)) == [".nii", ".nii.gz", ".npy", ".zip"]
    assert "NIfTI" not in accepted(("2d",)) and "PNG" not in accepted(("3d",))
    assert scan_kind("ct.nii.gz", ("3d",)) == "3d"
    with pytest.raises(
        UploadError, match=r"ct\.npy: this model answers about 2D images, not 3D scans\. Upload 2D: PNG"
    ):
        scan_kind("ct.npy", ("2d",))
    with pytest.raises(
        UploadError, match=r"x\.png: this model answers about 3D volumes, not 2D scans\. Upload 3D: NIfTI"
    ):
        scan_kind("x.png", ("3d",))
    with pytest.raises(
        UploadError,
        match=r"notes\.txt: file type '\.txt' is not accepted\. Upload 2D: PNG, JPEG or DICOM \(\.dcm\)\.$",
    ):
        scan_kind("notes.txt", ("2d",))


def test_a_refused_kind_is_neither_read_nor_unpacked(tmp_path: Path) -> None:
    """A zip for a 2D-only model is refused by its name: no ``series-*`` folder is unpacked."""
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "series.zip").write_bytes(b"not even a zip")
    with pytest.raises(UploadError, match="answers about 2D images"):
        open_scan(
            tmp_path / "series.zip", work_dir=work, max_bytes=2**20, max_unzipped_bytes=2**20, kinds=("2d",)
        )
    assert list(work.iterdir()) == []


def test_a_series_that_cannot_be_shown_is_not_kept_unpacked(tmp_path: Path) -> None:
    import zipfile

    work = tmp_path / "work"
    work.mkdir()
    with zipfile.ZipFile(tmp_path / "series.zip", "w") as zf:
        zf.writestr("series/1.dcm", b"not a DICOM slice")
    with pytest.raises(UploadError, match="series.zip cannot be read"):
        open_scan(tmp_path / "series.zip", work_dir=work, max_bytes=2**20, max_unzipped_bytes=2**20)
    assert list(work.iterdir()) == []  # the unpacked series-* folder went with the refusal


async def _app(scope, receive, send) -> None:  # noqa: ANN001
    """Echoes the request body it received (what gradio's upload route would store)."""
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/octet-stream")],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _post(files: list, kinds: tuple[str, ...] = ("2d",), path: str = "/gradio_api/upload") -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=UploadGate(_app, kinds=kinds))
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            return await client.post(path, files=files)

    return asyncio.run(go())


def test_the_gate_refuses_before_the_app_sees_a_byte() -> None:
    refused = _post([("files", ("ct.npy", b"\x93NUMPY" + b"\0" * 100_000))])
    assert refused.status_code == 400
    assert refused.text.startswith("ct.npy: this model answers about 2D images, not 3D scans.")
    assert "notes.txt: file type '.txt' is not accepted" in _post([("files", ("notes.txt", b"hi"))]).text
    content = bytes(range(256)) * 1000
    passed = _post([("files", ("scan.PNG", content))])
    assert passed.status_code == 200 and content in passed.content  # the whole body, replayed
    assert _post([("files", ("ct.npy", b"x"))], kinds=("2d", "3d")).status_code == 200
    assert (
        _post([("files", ("ct.npy", b"x"))], path="/gradio_api/queue/join").status_code == 200
    )  # not uploads


def test_file_names_of_multipart_headers() -> None:
    head = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a b.nii.gz"\r\nContent-Type: x'
    assert part_file_name(head) == "a b.nii.gz"
    assert part_file_name(b"form-data; name=\"files\"; filename*=UTF-8''sc%C3%A4n.npy") == "scän.npy"
    assert (
        part_file_name(b'form-data; name="files"; filename="evil.png"; filename*=UTF-8\'\'evil.npy')
        == "evil.npy"
    )
    assert part_file_name(b'form-data; name="files"') is None


def test_refused_uploads_are_forgotten_only_inside_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "uploads"
    stored = folder / "0123abcd" / "broken.png"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"x")
    forget_upload(stored, folder)
    assert not stored.parent.exists() and folder.is_dir()  # the file and its emptied hash folder
    mine = tmp_path / "scan.png"
    mine.write_bytes(b"the user's own file")
    forget_upload(mine, folder)  # e.g. scan= on the command line
    assert mine.is_file()


def test_the_upload_folder_is_its_own_and_goes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import atexit

    hooks: list = []
    monkeypatch.setattr(atexit, "register", hooks.append)
    given = tmp_path / "given"
    given.mkdir()
    (given / "keep.txt").write_text("not the demo's")
    uploads = UploadFolder(given)
    assert uploads.path.parent == given.resolve() and uploads.path.name.startswith("medmvl-demo-")
    (uploads.path / "scan.png").write_bytes(b"x")
    assert hooks == [uploads.remove]  # removal registered as the folder is made
    uploads.remove()
    uploads.remove()  # again: nothing to do
    assert [p.name for p in given.iterdir()] == ["keep.txt"]
