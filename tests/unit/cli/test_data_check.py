"""``medmvl-data check`` reports every problem of a file at once and exits non-zero on errors."""

from __future__ import annotations

import json

from medmvl.cli.data import main


def test_check_reports_all_problems(tmp_path, capsys) -> None:
    records = [
        {
            "id": "a",
            "image": ["x.png"],
            "conversations": [{"from": "human", "value": "<image>\\nQ?"}, {"from": "gpt", "value": "A."}],
            "question_type": "modality",
        },
        {"id": "b", "conversations": [{"from": "gpt", "value": "starts with gpt"}]},
        {
            "id": "c",
            "image": ["1.png", "2.png"],
            "conversations": [{"from": "human", "value": "<image> one"}, {"from": "gpt", "value": "A."}],
            "oops": 1,
        },
    ]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(records))
    (tmp_path / "x.png").write_bytes(b"")  # present: without --images only paths are checked
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    assert "id 'b'" in out or "'b'" in out
    assert "'c'" in out and "oops" in out
    assert "question_type" not in out  # a known metadata key is no warning
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert {("'b'" in e, "'c'" in e) for e in errors} == {(True, False), (False, True)}
    assert f"{len(errors)} error(s), 1 warning(s)" in out


def test_check_clean_file_exits_zero(tmp_path, capsys) -> None:
    path = tmp_path / "ok.json"
    path.write_text(
        json.dumps(
            [
                {
                    "id": "0",
                    "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}],
                }
            ]
        )
    )
    assert main(["check", str(path)]) == 0
    assert "0 error(s), 0 warning(s)" in capsys.readouterr().out


def _sample(sid: str, images: list[str] = (), image3d: list[str] = ()) -> dict:
    prefix = "<image>\n" * len(images) + "<image3d>\n" * len(image3d)
    record = {
        "id": sid,
        "conversations": [{"from": "human", "value": prefix + "Q?"}, {"from": "gpt", "value": "A."}],
    }
    if images:
        record["image"] = list(images)
    if image3d:
        record["image3d"] = list(image3d)
    return record


def test_check_without_images_names_every_missing_path(tmp_path, capsys) -> None:
    """Issue 16: without --images, check passed a file whose image paths do not exist."""
    (tmp_path / "here.png").write_bytes(b"not decoded without --images")
    (tmp_path / "series").mkdir()  # a DICOM series folder is a valid image3d path
    records = [
        _sample("ok", ["here.png"], ["series"]),
        _sample("no_png", ["here.png", "gone.png"]),
        _sample("no_vol", image3d=["gone.nii.gz"]),
        _sample("escape", ["../outside.png"]),
        _sample("dir_as_image", ["series"]),
    ]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(records))
    assert main(["check", str(path)]) == 1
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    expected = [
        (
            "sample 1 (id 'no_png'), field 'image[1]'",
            f"image file {str(tmp_path / 'gone.png')!r} does not exist",
        ),
        ("sample 2 (id 'no_vol'), field 'image3d[0]'", "gone.nii.gz' does not exist"),
        ("sample 3 (id 'escape'), field 'image[0]'", "leaves image_dir"),
        ("sample 4 (id 'dir_as_image'), field 'image[0]'", "is not a file"),
    ]
    assert len(errors) == len(expected), out
    for (where, what), line in zip(expected, errors):
        assert f"{path}: {where}" in line and what in line, (where, line)
    assert f"{path}: 4 error(s), 0 warning(s)" in out


def test_check_resolves_paths_as_training_does(tmp_path, capsys) -> None:
    """Relative image paths resolve against --image-dir, volumes against --image3d-dir, else the file's folder
    (as AnnotationDataset and infer.py do): a volume beside the images but not the annotations is missing."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"")
    (images / "v.npy").write_bytes(b"")
    (tmp_path / "w.npy").write_bytes(b"")
    path = tmp_path / "ann.json"
    path.write_text(
        json.dumps([_sample("ok", ["a.png"], ["w.npy"]), _sample("beside_images", image3d=["v.npy"])])
    )
    assert main(["check", str(path), "--image-dir", str(images)]) == 1
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "'beside_images'" in errors[0], out
    assert str(tmp_path / "v.npy") in errors[0]
    assert main(["check", str(path), "--image-dir", str(images), "--image3d-dir", str(images)]) == 1
    out = capsys.readouterr().out
    assert "'ok'" in out and str(images / "w.npy") in out and "'beside_images'" not in out
