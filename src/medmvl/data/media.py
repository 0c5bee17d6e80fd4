"""Where a sample's image and volume paths point, and whether those files can be read.

One rule for the dataset (which checks paths when it is built) and ``medmvl-data check`` (which checks
every path by default, ``check_media(read=False)``, and with ``--images`` also decodes every file): a
relative path resolves against ``image_dir`` / ``image3d_dir`` and may not leave it through ``..``; an
absolute path is used as it is; an ``image3d`` path may be a DICOM series folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from medmvl.data.images import ImageReadError, load_image
from medmvl.data.schema import Problem, Sample


class MediaPathError(ValueError):
    """A path escapes its folder or names no file; ``code`` is ``path_escape`` or ``missing_<key>``."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def resolve_media_path(path: str, root: str | os.PathLike, key: str = "image") -> Path:
    """Resolve ``path`` of field ``key`` (``image`` or ``image3d``) against ``root``.

    Raises:
        MediaPathError: A relative path leaving ``root`` through ``..``, or nothing at the path.
    """
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        if os.path.normpath(path).split(os.sep)[0] == "..":
            raise MediaPathError(
                f"path {path!r} leaves {key}_dir {str(root)!r} through '..'; expected a path inside it "
                "or an absolute path",
                "path_escape",
            )
        candidate = Path(root) / candidate
    if candidate.is_file() or (key == "image3d" and candidate.is_dir()):  # a DICOM series folder
        return candidate
    what = "image file" if key == "image" else "volume file or DICOM folder"
    state = "is not a file" if candidate.exists() else "does not exist"
    raise MediaPathError(f"{what} {str(candidate)!r} {state}", f"missing_{key}")


def read_check(path: Path, key: str) -> None:
    """Decode ``path`` fully (an image, or a volume with its voxel checks); raise ``ImageReadError``."""
    if key == "image":
        load_image(path)
        return
    from medmvl.data.volumes import check_volume, read_volume

    check_volume(read_volume(path, npy_axcodes="SPL"), path)


def check_media(
    samples: Iterable[Sample],
    *,
    image_dir: str | os.PathLike,
    image3d_dir: str | os.PathLike | None = None,
    read: bool = True,
) -> list[Problem]:
    """Every path problem of ``samples`` (escapes, missing files) and, with ``read``, every unreadable file.

    Each file is decoded once even when several samples share it; each sample gets its own problem.
    """
    roots = {"image": Path(image_dir), "image3d": Path(image3d_dir if image3d_dir is not None else image_dir)}
    decoded: dict[Path, str | None] = {}
    problems: list[Problem] = []
    for sample in samples:
        for key, paths in (("image", sample.images), ("image3d", sample.images3d)):
            for k, raw in enumerate(paths):
                field = f"{key}[{k}]"
                try:
                    path = resolve_media_path(raw, roots[key], key)
                except MediaPathError as err:
                    problems.append(
                        Problem(sample.source, sample.index, sample.id, field, str(err), err.code)
                    )
                    continue
                if not read:
                    continue
                if path not in decoded:
                    try:
                        read_check(path, key)
                        decoded[path] = None
                    except ImageReadError as err:
                        decoded[path] = str(err)
                if decoded[path] is not None:
                    problems.append(
                        Problem(
                            sample.source, sample.index, sample.id, field, decoded[path], f"unreadable_{key}"
                        )
                    )
    return problems
