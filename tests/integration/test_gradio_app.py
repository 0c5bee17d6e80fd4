"""The Gradio demo served on 127.0.0.1 and driven by gradio_client (2D and 3D questions, multi-turn,
refused uploads), a headless Chromium screenshot of the page with its controls, and ``demo.py`` run as a
service: SIGTERM, Ctrl-C (SIGINT) and a normal exit each remove the upload folder it made, and an upload of a
kind the model does not serve is refused before it is stored, with a message and no server traceback."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from medmvl.apps.gradio_app import Session, sample_for
from medmvl.apps.scans import open_scan
from medmvl.inference import Generator
from medmvl.models.vlm import MedVLM
from tests.conftest import CONF_DIR, ROOT

pytest.importorskip("gradio", reason="the demo needs the 'demo' extra (gradio), which `make test` installs")
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

TOKENS = 6
pytestmark = pytest.mark.slow  # one server for the module: model load + gradio start take ~10 s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(saved_model_3d: Path, volume_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The demo of the tiny 2D + 3D model on a free port, opening with a volume (for the screenshot)."""
    from medmvl.cli.demo import launch

    upload_dir = tmp_path_factory.mktemp("uploads")
    overrides = [
        f"model={saved_model_3d}",
        f"server_port={_free_port()}",
        f"upload_dir={upload_dir}",
        f"scan={volume_dir / '2.nii.gz'}",
        "max_upload_mb=1",
        f"max_new_tokens={TOKENS}",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="demo", overrides=overrides)
    app = launch(cfg, block=False)
    app.medmvl_upload_dir = upload_dir
    try:
        yield app
    finally:
        app.close()


@pytest.fixture
def client(server, tmp_path: Path) -> Client:  # noqa: ANN001
    return Client(server.local_url, verbose=False, analytics_enabled=False, download_files=str(tmp_path))


def _expected(model: MedVLM, path: Path | None, questions: list[str]) -> list[str]:
    """What the model answers in-process to the same conversation (greedy)."""
    work = path.parent if path else Path(".")
    scan = None if path is None else open_scan(path, work_dir=work, max_bytes=2**30, max_unzipped_bytes=2**30)
    session, answers = Session(scan), []
    generator = Generator(model)
    for q in questions:
        answers.append(generator.generate([sample_for(session, q)], max_new_tokens=TOKENS)[0])
        session.turns.append((q, answers[-1]))
    return answers


def _answers(messages: list[dict]) -> list[str]:
    def text(content) -> str:  # noqa: ANN001
        return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)

    return [text(m["content"]) for m in messages if m["role"] == "assistant"]


def test_listens_on_localhost_without_telemetry(server) -> None:  # noqa: ANN001
    assert server.local_url.startswith("http://127.0.0.1:") and server.server_name == "127.0.0.1"
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and server.analytics_enabled is False
    assert not server.share


def test_2d_question_then_a_follow_up(
    client: Client, talkative_model_3d: MedVLM, image_dir: Path, server
) -> None:  # noqa: ANN001
    status, view2d, *_ = client.predict(handle_file(image_dir / "1.png"), api_name="/upload")
    assert status == "1.png: 2D image 32 x 40 pixels" and view2d["visible"]
    assert list(Path(server.medmvl_upload_dir).rglob("1.png"))  # the upload is kept in the temp folder
    questions = ["What organ is shown?", "Are you sure?"]
    for k, q in enumerate(questions):
        messages, box = client.predict(q, 0.0, TOKENS, api_name="/ask")
        assert box == "" and len(messages) == 2 * (k + 1)
    expected = _expected(talkative_model_3d, image_dir / "1.png", questions)
    assert all(expected) and _answers(messages) == expected  # the follow-up saw the first answer


def test_3d_question_with_slice_sliders(client: Client, talkative_model_3d: MedVLM, volume_dir: Path) -> None:
    out = client.predict(handle_file(volume_dir / "0.npy"), api_name="/upload")
    status, view2d, axial, coronal, sagittal, *sliders, chat = out  # (the views' row is no API output)
    assert status.startswith("0.npy: 3D volume 20 x 24 x 28 voxels") and not view2d["visible"]
    assert [s["maximum"] for s in sliders] == [19, 23, 27] and [s["value"] for s in sliders] == [10, 12, 14]
    assert all(Path(v["value"]).is_file() for v in (axial, coronal, sagittal)) and chat == []
    messages, _ = client.predict("Is there a nodule?", 0.0, TOKENS, api_name="/ask")
    assert _answers(messages) == _expected(talkative_model_3d, volume_dir / "0.npy", ["Is there a nodule?"])
    messages = client.predict(api_name="/clear")
    assert messages == []


def _message(err: BaseException) -> str:
    """An error's text, with the body of a refused HTTP request (the upload route answers 400 and why)."""
    response = getattr(err, "response", None)
    return f"{err} {getattr(response, 'text', '')}"


def test_refused_uploads_say_why(client: Client, server, tmp_path: Path) -> None:  # noqa: ANN001
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(AppError, match="broken.png cannot be read"):
        client.predict(handle_file(broken), api_name="/upload")
    assert not list(Path(server.medmvl_upload_dir).rglob("broken.png"))  # deleted once refused
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(Exception) as refused:  # noqa: PT011 (the upload route's 400, before storing)
        client.predict(handle_file(text), api_name="/upload")
    assert "notes.txt: file type '.txt' is not accepted. Upload 2D: PNG" in _message(refused.value)
    assert not list(Path(server.medmvl_upload_dir).rglob("notes.txt"))
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (800, 800, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 2**20
    with pytest.raises(Exception, match="(?i)too large|maximum|exceed"):  # gradio's max_file_size (1 MB)
        client.predict(handle_file(big), api_name="/upload")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # root in a container
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--window-size=1280,1400",
    "--virtual-time-budget=20000",
]


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian chromium is not installed (`make test` installs it as root)"
)
def test_headless_chromium_screenshot(server, tmp_path: Path) -> None:  # noqa: ANN001
    base = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "demo.png"
    run = subprocess.run([*base, f"--screenshot={shot}", server.local_url], capture_output=True, timeout=120)
    assert shot.is_file(), run.stderr.decode()[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (1400, 1280) and pixels.std() > 10  # a page, not a blank frame
    dom = subprocess.run(
        [*base, "--dump-dom", server.local_url], capture_output=True, timeout=120
    ).stdout.decode()
    for label in (
        "medmvl demo",
        "Scan (2D image or 3D volume)",
        "Axial slice",
        "Coronal slice",
        "Sagittal slice",
        "Conversation",
        "Question",
        "Temperature",
        "Max new tokens",
        "Ask",
        "2.nii.gz: 3D volume",  # the opening scan was loaded and described
    ):
        assert label in dom, label
    if os.environ.get("MEDMVL_SCREENSHOT_DIR"):  # keep the picture, e.g. to look at it
        shutil.copy(shot, Path(os.environ["MEDMVL_SCREENSHOT_DIR"]) / "demo.png")


DRIVER = """
import sys
from hydra import compose, initialize_config_dir
from medmvl.cli.demo import launch

with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = compose(config_name="demo", overrides=sys.argv[2:])
app = launch(cfg, block=False)
sys.stdin.readline()  # the test says when
app.close()
"""


class Demo:
    """``demo.py`` (or a script calling ``launch(block=False)``) in a child process whose temporary folder
    (``TMPDIR``) is ``<tmp_path>/tmp``; its output goes to ``<tmp_path>/demo.log``."""

    def __init__(self, tmp_path: Path, model: Path, *overrides: str, driver: bool = False) -> None:
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        self.log = tmp_path / "demo.log"
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}/"
        args = [f"model={model}", f"server_port={port}", f"max_new_tokens={TOKENS}", *overrides]
        if driver:
            cmd = [sys.executable, "-c", DRIVER, str(CONF_DIR), *args]
        else:
            cmd = [sys.executable, str(ROOT / "demo.py"), *args, f"hydra.run.dir={tmp_path / 'run'}"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(self.tmp), "PYTHONUNBUFFERED": "1"}
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, text=True
            )
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 240.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the demo exited ({self.process.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop(signal.SIGKILL)
        pytest.fail(f"the demo did not start in {timeout:.0f} s:\n{self.log.read_text()[-3000:]}")

    def client(self, tmp_path: Path) -> Client:
        return Client(self.url, verbose=False, analytics_enabled=False, download_files=str(tmp_path))

    def stop(self, how: signal.Signals | None) -> int:
        """Send ``how`` (``None``: tell the driver script to return normally) and wait for the exit status."""
        if self.process.poll() is None:
            if how is None:
                self.process.stdin.write("stop\n")
                self.process.stdin.flush()
            else:
                self.process.send_signal(how)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"the demo did not stop within 60 s of {how}:\n{self.log.read_text()[-3000:]}")


def _folders(where: Path) -> list[Path]:
    return sorted(where.glob("medmvl-demo-*"))


def test_sigterm_removes_the_uploads_and_other_kinds_are_refused_before_stored(
    saved_model: Path, image_dir: Path, volume_dir: Path, tmp_path: Path
) -> None:
    """The 2D-only model: the page offers only 2D types; a volume is refused at the upload route with a
    message (no file stored, no traceback); SIGTERM (how services stop) removes the folder."""
    demo = Demo(tmp_path, saved_model)
    try:
        (folder,) = _folders(demo.tmp)
        client = demo.client(tmp_path)
        components = client.config["components"]
        (box,) = [c for c in components if c.get("type") == "file"]
        assert box["props"]["file_types"] == [".png", ".jpg", ".jpeg", ".dcm", ".dicom"]
        assert box["props"]["label"] == "Scan (2D image)"
        (intro,) = [
            c["props"]["value"] for c in components if "Upload a scan" in str(c["props"].get("value"))
        ]
        assert "answers about 2D images" in intro and "NIfTI" not in intro and ".npy" not in intro
        status, *_ = client.predict(handle_file(image_dir / "1.png"), api_name="/upload")
        assert status.startswith("1.png: 2D image") and list(folder.rglob("1.png"))
        with pytest.raises(Exception) as refused:  # noqa: PT011 (the upload route's 400)
            client.predict(handle_file(volume_dir / "0.npy"), api_name="/upload")
        message = _message(refused.value)
        assert "0.npy: this model answers about 2D images, not 3D scans. Upload 2D: PNG" in message
        assert not list(folder.rglob("0.npy"))  # never stored
        broken = tmp_path / "broken.png"
        broken.write_bytes(b"not a png")
        with pytest.raises(AppError, match="broken.png cannot be read"):
            client.predict(handle_file(broken), api_name="/upload")
        assert not list(folder.rglob("broken.png"))  # read to be refused, then deleted
    finally:
        status = demo.stop(signal.SIGTERM)
    log = demo.log.read_text()
    assert status == 0, log[-3000:]
    assert not folder.exists() and _folders(demo.tmp) == []
    assert "Traceback" not in log, log[-3000:]


def test_ctrl_c_removes_only_the_folder_it_made_in_upload_dir(
    saved_model: Path, image_dir: Path, tmp_path: Path
) -> None:
    """``upload_dir=`` given: the demo makes its own ``medmvl-demo-*`` folder there and removes only that."""
    mine = tmp_path / "uploads"
    mine.mkdir()
    (mine / "keep.txt").write_text("not the demo's")
    demo = Demo(tmp_path, saved_model, f"upload_dir={mine}")
    try:
        (folder,) = _folders(mine)
        client = demo.client(tmp_path)
        client.predict(handle_file(image_dir / "0.png"), api_name="/upload")
        assert list(folder.rglob("0.png"))
    finally:
        status = demo.stop(signal.SIGINT)
    log = demo.log.read_text()
    assert status == 0, log[-3000:]
    assert [p.name for p in mine.iterdir()] == ["keep.txt"] and _folders(demo.tmp) == []
    assert "Traceback" not in log, log[-3000:]


def test_a_normal_exit_removes_the_uploads(saved_model: Path, image_dir: Path, tmp_path: Path) -> None:
    """``launch(block=False)``, then ``app.close()`` and the interpreter's normal exit."""
    demo = Demo(tmp_path, saved_model, driver=True)
    try:
        (folder,) = _folders(demo.tmp)
        demo.client(tmp_path).predict(handle_file(image_dir / "2.png"), api_name="/upload")
        assert list(folder.rglob("2.png"))
    finally:
        status = demo.stop(None)
    log = demo.log.read_text()
    assert status == 0 and not folder.exists(), log[-3000:]
    assert "Traceback" not in log, log[-3000:]
