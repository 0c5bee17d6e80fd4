"""The Gradio demo served on 127.0.0.1 and driven by gradio_client (2D and 3D questions, multi-turn,
refused uploads), and a headless Chromium screenshot of the page with its controls."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
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
from tests.conftest import CONF_DIR

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


def test_refused_uploads_say_why(client: Client, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(AppError, match="broken.png cannot be read"):
        client.predict(handle_file(broken), api_name="/upload")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(AppError, match="Invalid file type"):
        client.predict(handle_file(text), api_name="/upload")
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
