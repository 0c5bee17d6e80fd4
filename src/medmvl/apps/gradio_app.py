"""Gradio demo: upload a 2D image or a 3D volume, look at it, and talk with a saved MedVLM about it.

The page: a file box (2D PNG/JPEG/DICOM, 3D NIfTI/.npy/zipped DICOM series; type and size checked with
a message that says what is wrong), the image or three slice views of the volume (axial, coronal,
sagittal) with one slider each, a multi-turn chat, and temperature / max-new-tokens controls. Each
browser session keeps its own scan and conversation (``gr.State``); a new upload starts a new
conversation. The model is asked exactly as ``infer.py`` asks it (``Generator``): the first question
gets the scan's placeholder (``<image>`` or ``<image3d>``), later turns carry the model's own answers.

Offline and private by construction: gradio's analytics and version check are off
(``GRADIO_ANALYTICS_ENABLED=False``, also set by :func:`disable_telemetry`), the default theme uses
local fonts, no share link is ever made, server-side rendering (a Node server) is off, and uploads live
in one temporary folder (``GRADIO_TEMP_DIR``) that ``python demo.py`` removes on exit.

API (``gradio_client``): ``/upload(file)``, ``/ask(question, temperature, max_new_tokens)`` and
``/clear()``; the scan and the conversation are session state, so one ``Client`` is one conversation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmvl.apps.scans import (
    ACCEPTED,
    PLANES,
    SUFFIXES_2D,
    SUFFIXES_3D,
    Scan,
    UploadError,
    open_scan,
    render_slice,
)
from medmvl.data.schema import IMAGE3D_TOKEN, IMAGE_TOKEN, Sample, Turn
from medmvl.inference.generator import Generator

VIEW_BUTTONS = ["download", "fullscreen"]  # no "share": it posts to Hugging Face


def disable_telemetry() -> None:
    """Turn off gradio's analytics / version check and Hugging Face telemetry before gradio is used."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class Session:
    """One browser session: the uploaded scan and the conversation about it."""

    scan: Scan | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)  # (question, answer)


@dataclass(frozen=True)
class DemoSettings:
    """Limits and defaults of the page (``conf/demo.yaml``).

    Attributes:
        title: Page title.
        upload_dir: Folder of uploads and unpacked series (``GRADIO_TEMP_DIR``).
        max_upload_mb: Largest accepted file.
        max_unzipped_mb: Largest total size of a zipped series' members.
        temperature: Initial temperature (0: greedy).
        max_new_tokens: Initial answer length limit.
        top_p: Nucleus mass when sampling.
        scan: A file shown (and asked about) when the page opens, as if uploaded.
    """

    title: str = "medmvl demo"
    upload_dir: str = "."
    max_upload_mb: float = 512.0
    max_unzipped_mb: float = 2048.0
    temperature: float = 0.0
    max_new_tokens: int = 128
    top_p: float = 0.9
    scan: str | None = None


def sample_for(session: Session, question: str) -> Sample:
    """The conversation so far plus ``question``; the first question carries the scan's placeholder."""
    scan = session.scan
    questions = [q for q, _ in session.turns] + [question]
    if scan is not None:
        token = IMAGE_TOKEN if scan.kind == "2d" else IMAGE3D_TOKEN
        questions[0] = f"{token}\n{questions[0]}"
    turns: list[Turn] = []
    for k, q in enumerate(questions):
        turns.append(Turn("human", q))
        if k < len(session.turns):
            turns.append(Turn("gpt", session.turns[k][1]))
    images = (scan.path,) if scan is not None and scan.kind == "2d" else ()
    volumes = (scan.path,) if scan is not None and scan.kind == "3d" else ()
    return Sample("demo", tuple(turns), images, volumes)


def chat_messages(session: Session) -> list[dict[str, str]]:
    """The conversation as gradio ``messages``."""
    out: list[dict[str, str]] = []
    for question, answer in session.turns:
        out += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return out


def build_app(generator: Generator, settings: DemoSettings) -> Any:
    """The Gradio ``Blocks`` page answering with ``generator`` (not launched).

    Raises:
        UploadError: ``settings.scan`` is given and cannot be shown (checked before the page exists).
    """
    disable_telemetry()
    os.environ["GRADIO_TEMP_DIR"] = str(Path(settings.upload_dir).resolve())
    import gradio as gr

    kinds = {"2d": generator.transform is not None, "3d": generator.volume_transform is not None}
    towers = (
        " and ".join(n for n, k in (("2D images", "2d"), ("3D volumes", "3d")) if kinds[k]) or "text only"
    )
    file_types = [*(SUFFIXES_2D if kinds["2d"] else ()), *(SUFFIXES_3D if kinds["3d"] else ())]

    def open_upload(path: str) -> Scan:
        scan = open_scan(
            path,
            work_dir=settings.upload_dir,
            max_bytes=int(settings.max_upload_mb * 2**20),
            max_unzipped_bytes=int(settings.max_unzipped_mb * 2**20),
        )
        if not kinds[scan.kind]:
            raise UploadError(
                f"{scan.name}: this model answers about {towers}, not {scan.kind.upper()} scans."
            )
        return scan

    def upload(path: str | None, session: Session | None):  # noqa: ANN202
        try:
            scan = open_upload(path) if path else None
        except UploadError as err:
            raise gr.Error(str(err), title="Upload refused") from err
        view = _views(scan)
        return (
            Session(scan),
            view["status"],
            gr.update(value=view["image"], visible=view["is2d"]),
            gr.update(visible=view["is3d"]),
            *(gr.update(value=v) for v in view["slices"]),
            *(gr.update(maximum=m, value=v) for m, v in view["sliders"]),
            [],
        )

    def show_slice(plane: str):  # noqa: ANN202
        def handler(index: float, session: Session | None):  # noqa: ANN202
            if session is None or session.scan is None or session.scan.kind != "3d":
                return gr.update()
            return render_slice(session.scan, plane, int(index))

        return handler

    def ask(question: str, temperature: float, max_new_tokens: float, session: Session | None):  # noqa: ANN202
        session = session or Session()
        question = (question or "").strip()
        if not question:
            raise gr.Error("Type a question first.", title="Empty question")
        answer = generator.generate(
            [sample_for(session, question)],
            temperature=float(temperature),
            top_p=settings.top_p,
            max_new_tokens=int(max_new_tokens),
        )[0]
        session = Session(session.scan, [*session.turns, (question, answer)])
        return session, chat_messages(session), ""

    def clear(session: Session | None):  # noqa: ANN202
        return Session(session.scan if session else None), []

    first = open_upload(settings.scan) if settings.scan else None
    start = _views(first)
    with gr.Blocks(title=settings.title, analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as app:
        session = gr.State(Session(first))
        gr.Markdown(
            f"# {settings.title}\nUpload a scan, then ask about it. This model answers about {towers}. "
            f"Accepted: {ACCEPTED}; up to {settings.max_upload_mb:g} MB. Research demo, not for clinical use."
        )
        with gr.Row():
            with gr.Column(scale=5):
                upload_box = gr.File(
                    label="Scan (2D image or 3D volume)", file_types=file_types, type="filepath"
                )
                status = gr.Markdown(start["status"], elem_id="scan-status")
                view2d = gr.Image(
                    start["image"],
                    label="Image",
                    interactive=False,
                    visible=start["is2d"],
                    buttons=VIEW_BUTTONS,
                )
                with gr.Row(visible=start["is3d"], equal_height=True) as views3d:
                    images, sliders = [], []
                    for plane, value, (top, index) in zip(PLANES, start["slices"], start["sliders"]):
                        name = plane.capitalize()
                        with gr.Column(min_width=140):
                            images.append(
                                gr.Image(
                                    value,
                                    label=f"{name} view",
                                    interactive=False,
                                    height=220,
                                    buttons=VIEW_BUTTONS,
                                )
                            )
                            sliders.append(gr.Slider(0, top, value=index, step=1, label=f"{name} slice"))
            with gr.Column(scale=6):
                chatbot = gr.Chatbot(
                    label="Conversation", height=480, feedback_options=None, buttons=["copy"]
                )
                question = gr.Textbox(
                    label="Question", placeholder="e.g. Which organ is shown in this slice?", lines=2
                )
                with gr.Row():
                    send = gr.Button("Ask", variant="primary")
                    clear_btn = gr.Button("New conversation")
                with gr.Accordion("Generation settings", open=True):
                    temperature = gr.Slider(
                        0.0, 1.5, value=settings.temperature, step=0.05, label="Temperature",
                        info="0 = greedy (deterministic)",
                    )  # fmt: skip
                    max_tokens = gr.Slider(
                        1, 1024, value=settings.max_new_tokens, step=1, label="Max new tokens"
                    )
        outputs = [session, status, view2d, views3d, *images, *sliders, chatbot]
        upload_box.upload(upload, [upload_box, session], outputs, api_name="upload")
        upload_box.clear(upload, [upload_box, session], outputs, api_visibility="private")
        for plane, image, slider in zip(PLANES, images, sliders):
            slider.input(
                show_slice(plane),
                [slider, session],
                image,
                api_visibility="private",
                trigger_mode="always_last",
                show_progress="hidden",
            )
        gr.on(
            [send.click, question.submit],
            ask,
            [question, temperature, max_tokens, session],
            [session, chatbot, question],
            api_name="ask",
        )
        clear_btn.click(clear, [session], [session, chatbot], api_name="clear")
    return app


def _views(scan: Scan | None) -> dict[str, Any]:
    """What the page shows for ``scan``: status line, 2D image, three middle slices and slider ranges."""
    is2d, is3d = scan is not None and scan.kind == "2d", scan is not None and scan.kind == "3d"
    shape = scan.shape if is3d else (2, 2, 2)
    return {
        "status": scan.describe() if scan else "No scan: questions are answered from text only.",
        "is2d": is2d,
        "is3d": is3d,
        "image": render_slice(scan, "axial", 0) if is2d else None,
        "slices": [render_slice(scan, p, n // 2) if is3d else None for p, n in zip(PLANES, shape)],
        "sliders": [(max(n - 1, 1), n // 2 if is3d else 0) for n in shape],
    }
