"""Gradio demo: upload a 2D image or a 3D volume, look at it, and talk with a saved MedVLM about it.

The page: a file box offering only the kinds the loaded model has a tower for (2D PNG/JPEG/DICOM, 3D
NIfTI/.npy/zipped DICOM series; type and size checked with a message that says what is wrong), the image
or three slice views of the volume (axial, coronal, sagittal) with one slider each, a multi-turn chat, and
temperature / max-new-tokens controls. Each browser session keeps its own scan and conversation
(``gr.State``); a new upload starts a new conversation. The model is asked exactly as ``infer.py`` asks it
(``Generator``): the first question gets the scan's placeholder (``<image>`` or ``<image3d>``), later turns
carry the model's own answers.

Offline and private by construction: gradio's analytics and version check are off
(``GRADIO_ANALYTICS_ENABLED=False``, also set by :func:`disable_telemetry`), the default theme uses
local fonts, no share link is ever made, server-side rendering (a Node server) is off, and uploads live
in one folder (``GRADIO_TEMP_DIR``) that ``python demo.py`` makes and removes when it stops
(:mod:`medmvl.apps.uploads`). A file of a kind the model does not serve is refused before it is stored
(:class:`~medmvl.apps.uploads.UploadGate`, passed to ``launch`` by ``medmvl.cli.demo``); one refused for
its contents is deleted at once. Refusals are messages on the page, never server tracebacks.

API (``gradio_client``): ``/upload(file)``, ``/ask(question, temperature, max_new_tokens)`` and
``/clear()``; the scan and the conversation are session state, so one ``Client`` is one conversation.

This module holds the session, the prompts, the event handlers (:class:`DemoHandlers`) and the page;
the scan column (file box, status, views) is laid out by :mod:`medmvl.apps.viewer`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmvl.apps.scans import (
    KINDS,
    PLANES,
    Kind,
    Scan,
    UploadError,
    accepted,
    file_types,
    open_scan,
    towers,
)
from medmvl.apps.uploads import forget_upload
from medmvl.apps.viewer import ScanViewer, build_viewer, scan_views, slice_update, viewer_updates
from medmvl.data.schema import IMAGE3D_TOKEN, IMAGE_TOKEN, Sample, Turn
from medmvl.inference.generator import Generator


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


def served_kinds(generator: Any) -> tuple[Kind, ...]:
    """The kinds of scan ``generator``'s model has a tower for: ``("2d",)``, ``("2d", "3d")``, ..."""
    readers = {
        "2d": getattr(generator, "transform", None),
        "3d": getattr(generator, "volume_transform", None),
    }
    return tuple(k for k in KINDS if readers[k] is not None)


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


class DemoHandlers:
    """The page's event handlers, answering with one generator under one set of limits.

    Each handler takes the browser session's :class:`Session` last and returns a new one (never changes
    it in place), so sessions stay independent.
    """

    def __init__(self, generator: Generator, settings: DemoSettings) -> None:
        self.generator = generator
        self.settings = settings
        self.kinds = served_kinds(generator)
        self.towers = towers(self.kinds)  # what the model answers about, in words
        self.accepted = accepted(self.kinds)
        self.file_types = file_types(self.kinds)
        self.label = "Scan ({})".format(
            " or ".join({"2d": "2D image", "3d": "3D volume"}[k] for k in self.kinds) or "none accepted"
        )

    def open_upload(self, path: str) -> Scan:
        """Check and open an uploaded file; its type is checked against the model's towers first (a
        refused kind is neither read nor unpacked).

        Raises:
            UploadError: the file is refused (type, size, contents) or the model has no tower for its kind.
        """
        settings = self.settings
        return open_scan(
            path,
            work_dir=settings.upload_dir,
            max_bytes=int(settings.max_upload_mb * 2**20),
            max_unzipped_bytes=int(settings.max_unzipped_mb * 2**20),
            kinds=self.kinds,
        )

    def upload(self, path: str | None, session: Session | None) -> tuple[Any, ...]:
        """A new upload (or a cleared file box): a new conversation about it and its views.

        A refused file is deleted from the upload folder and the page shows why (no server traceback).
        """
        import gradio as gr

        try:
            scan = self.open_upload(path) if path else None
        except UploadError as err:
            forget_upload(path, self.settings.upload_dir)
            raise gr.Error(str(err), title="Upload refused", print_exception=False) from err
        return (Session(scan), *viewer_updates(scan), [])

    def slice_handler(self, plane: str) -> Callable[[float, Session | None], Any]:
        """The handler of ``plane``'s slider: the view at the slider's slice."""

        def handler(index: float, session: Session | None) -> Any:  # gradio names the event after it
            return slice_update(session.scan if session is not None else None, plane, index)

        return handler

    def ask(
        self, question: str, temperature: float, max_new_tokens: float, session: Session | None
    ) -> tuple[Session, list[dict[str, str]], str]:
        """Answer ``question`` in the conversation; returns the session, the chat and an emptied text box."""
        import gradio as gr

        session = session or Session()
        question = (question or "").strip()
        if not question:
            raise gr.Error("Type a question first.", title="Empty question", print_exception=False)
        answer = self.generator.generate(
            [sample_for(session, question)],
            temperature=float(temperature),
            top_p=self.settings.top_p,
            max_new_tokens=int(max_new_tokens),
        )[0]
        session = Session(session.scan, [*session.turns, (question, answer)])
        return session, chat_messages(session), ""

    def clear(self, session: Session | None) -> tuple[Session, list[dict[str, str]]]:
        """A new conversation about the same scan."""
        return Session(session.scan if session else None), []


@dataclass
class ChatPanel:
    """The components of the chat column (gradio components, typed loosely: gradio is imported late)."""

    chatbot: Any
    question: Any
    send: Any
    clear: Any
    temperature: Any
    max_tokens: Any


def build_app(generator: Generator, settings: DemoSettings) -> Any:
    """The Gradio ``Blocks`` page answering with ``generator`` (not launched).

    Raises:
        UploadError: ``settings.scan`` is given and cannot be shown (checked before the page exists).
    """
    disable_telemetry()
    os.environ["GRADIO_TEMP_DIR"] = str(Path(settings.upload_dir).resolve())
    import gradio as gr

    handlers = DemoHandlers(generator, settings)
    first = handlers.open_upload(settings.scan) if settings.scan else None
    start = scan_views(first)
    with gr.Blocks(title=settings.title, analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as app:
        session = gr.State(Session(first))
        gr.Markdown(_introduction(settings, handlers))
        with gr.Row():
            viewer = build_viewer(handlers.file_types, start, label=handlers.label)
            chat = _chat_column(settings)
        _wire_events(handlers, session, viewer, chat)
    return app


def _introduction(settings: DemoSettings, handlers: DemoHandlers) -> str:
    """The page's heading and what it accepts (only the kinds the model serves)."""
    return (
        f"# {settings.title}\nUpload a scan, then ask about it. This model answers about {handlers.towers}. "
        f"Accepted: {handlers.accepted}; up to {settings.max_upload_mb:g} MB. Research demo, not for "
        "clinical use."
    )


def _chat_column(settings: DemoSettings) -> ChatPanel:
    """Lay out the conversation, the question box, its buttons and the generation settings."""
    import gradio as gr

    with gr.Column(scale=6):
        chatbot = gr.Chatbot(label="Conversation", height=480, feedback_options=None, buttons=["copy"])
        question = gr.Textbox(
            label="Question", placeholder="e.g. Which organ is shown in this slice?", lines=2
        )
        with gr.Row():
            send = gr.Button("Ask", variant="primary")
            clear = gr.Button("New conversation")
        temperature, max_tokens = _generation_settings(settings)
    return ChatPanel(chatbot, question, send, clear, temperature, max_tokens)


def _generation_settings(settings: DemoSettings) -> tuple[Any, Any]:
    """The temperature and max-new-tokens sliders, opening on the configured defaults."""
    import gradio as gr

    with gr.Accordion("Generation settings", open=True):
        temperature = gr.Slider(
            0.0, 1.5, value=settings.temperature, step=0.05, label="Temperature",
            info="0 = greedy (deterministic)",
        )  # fmt: skip
        max_tokens = gr.Slider(1, 1024, value=settings.max_new_tokens, step=1, label="Max new tokens")
    return temperature, max_tokens


def _wire_events(handlers: DemoHandlers, session: Any, viewer: ScanViewer, chat: ChatPanel) -> None:
    """Connect the page's events; ``/upload``, ``/ask`` and ``/clear`` are the API, the rest is private."""
    import gradio as gr

    outputs = [session, *viewer.outputs, chat.chatbot]
    viewer.upload.upload(handlers.upload, [viewer.upload, session], outputs, api_name="upload")
    viewer.upload.clear(handlers.upload, [viewer.upload, session], outputs, api_visibility="private")
    for plane, image, slider in zip(PLANES, viewer.slices, viewer.sliders):
        slider.input(
            handlers.slice_handler(plane),
            [slider, session],
            image,
            api_visibility="private",
            trigger_mode="always_last",
            show_progress="hidden",
        )
    gr.on(
        [chat.send.click, chat.question.submit],
        handlers.ask,
        [chat.question, chat.temperature, chat.max_tokens, session],
        [session, chat.chatbot, chat.question],
        api_name="ask",
    )
    chat.clear.click(handlers.clear, [session], [session, chat.chatbot], api_name="clear")
