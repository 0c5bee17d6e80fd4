"""Where the demo keeps uploads, and what it lets in: its own upload folder, removed when it stops, and a gate
that refuses a file of a type the model does not serve before gradio stores it.

Uploaded scans are patient data. The demo makes one new folder ``medmvl-demo-*`` (in ``upload_dir`` when
given, else the temporary folder, ``TMPDIR``) that gradio stores every upload and rendered view in
(``GRADIO_TEMP_DIR``) and zipped series are unpacked in, and removes that folder, and only that folder,
when the process exits: after Ctrl-C (SIGINT), SIGTERM (how Docker, Kubernetes and systemd stop a
service), SIGHUP or a normal exit (``medmvl.cli.demo`` turns those signals into a normal exit). Only a
SIGKILL (or a power cut) leaves it behind. Nothing else in a given ``upload_dir`` is touched.

gradio's upload route (``POST .../gradio_api/upload``) writes a file to the upload folder before any event
handler runs; the page's file box refuses other types in the browser, but an API client (``gradio_client``,
``curl``) is not bound by it. :class:`UploadGate` is an ASGI middleware in front of that route: it reads the
headers of the request's first file part and answers ``400`` with the reason (e.g. ``0.npy: this model
answers about 2D images, not 3D scans. Upload 2D: PNG, JPEG or DICOM (.dcm).``) when its name is not of a
served type, so nothing of it reaches the disk. A file refused later, for its contents (unreadable, too
large unzipped), is deleted from the folder at once (:func:`forget_upload`).
"""

from __future__ import annotations

import atexit
import logging
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from medmvl.apps.scans import Kind, UploadError, scan_kind

log = logging.getLogger("medmvl.demo")
PREFIX = "medmvl-demo-"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class UploadFolder:
    """A new folder ``medmvl-demo-*`` in ``parent`` (``None``: the temporary folder), removed at exit.

    Removal is registered with :mod:`atexit` when the folder is made; :meth:`remove` may be called earlier
    and any number of times.
    """

    def __init__(self, parent: str | Path | None = None) -> None:
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=parent)).resolve()
        atexit.register(self.remove)
        log.info("uploads go to %s (removed when the demo stops)", self.path)

    def remove(self) -> None:
        """Delete the folder and everything in it (nothing when it is already gone)."""
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)
            log.info("removed the upload folder %s", self.path)


def forget_upload(path: str | Path, folder: str | Path) -> None:
    """Delete a refused upload ``path`` (and its emptied parent) when it lies inside ``folder``; never
    anything outside it (a ``scan=`` given on the command line is the user's file)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    if not path.is_relative_to(folder) or path == folder:
        return
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    parent = path.parent
    if parent != folder and parent.is_relative_to(folder) and not any(parent.iterdir()):
        parent.rmdir()


_FILENAME = re.compile(
    rb"""filename\*=(?:[\w-]+)?'[^']*'([^;\r\n]+)|filename="((?:[^"\\]|\\.)*)"|filename=([^;\r\n]+)"""
)


def part_file_name(head: bytes) -> str | None:
    """The file name in a multipart part's headers (``filename*=`` first, as RFC 7578 allows), or ``None``."""
    names = {}
    for match in _FILENAME.finditer(head):
        extended, quoted, bare = match.groups()
        if extended is not None:
            names.setdefault("extended", unquote(extended.decode("latin-1").strip(), encoding="utf-8"))
        elif quoted is not None:
            names.setdefault("plain", unquote(quoted.decode("utf-8", "replace").replace('\\"', '"')))
        elif bare is not None:
            names.setdefault("plain", bare.decode("utf-8", "replace").strip())
    return names.get("extended", names.get("plain"))


class UploadGate:
    """ASGI middleware: refuse an upload whose (first) file is not of the served ``kinds``, before storing.

    Args:
        app: The gradio app.
        kinds: The kinds the model has a tower for (``2d``, ``3d``).
        max_head: How many bytes of the body are read, at most, to find the first part's headers.
    """

    def __init__(self, app: ASGIApp, kinds: Sequence[Kind], max_head: int = 64 * 1024) -> None:
        self.app = app
        self.kinds = tuple(kinds)
        self.max_head = max_head

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_upload(scope):
            await self.app(scope, receive, send)
            return
        buffered: list[Message] = []
        head, more = b"", True
        while more and len(head) < self.max_head and b"\r\n\r\n" not in head:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break
            head += message.get("body", b"")
            more = message.get("more_body", False)
        name = part_file_name(head.split(b"\r\n\r\n", 1)[0])
        if name is not None:
            try:
                scan_kind(name, self.kinds)
            except UploadError as err:
                log.info("upload refused before storing: %s", err)
                await _plain_response(send, 400, str(err))
                return
        await self.app(scope, _replay(buffered, receive), send)


def _is_upload(scope: Scope) -> bool:
    path = str(scope.get("path", "")).rstrip("/")
    return scope.get("type") == "http" and scope.get("method") == "POST" and path.endswith("/upload")


def _replay(buffered: list[Message], receive: Receive) -> Receive:
    """``receive`` that first hands back the messages already read."""
    pending = list(buffered)

    async def replay() -> Message:
        return pending.pop(0) if pending else await receive()

    return replay


async def _plain_response(send: Send, status: int, text: str) -> None:
    body = text.encode("utf-8")
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
