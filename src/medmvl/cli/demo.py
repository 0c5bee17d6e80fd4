"""``python demo.py model=<dir>`` / ``medmvl-demo model=<dir>``: serve the Gradio demo of a saved model.

Listens on ``127.0.0.1`` (this machine only) unless ``server_name`` says otherwise; never makes a share
link; analytics off. Uploads go to a new folder ``medmvl-demo-*`` (in ``upload_dir`` when given, else the
temporary folder) that is removed when the demo stops: Ctrl-C (SIGINT), SIGTERM (``docker stop``,
Kubernetes, systemd), SIGHUP or a normal exit each end the process normally (status 0), so the folder goes;
only that folder, nothing else in ``upload_dir`` (:mod:`medmvl.apps.uploads`). A SIGKILL cannot be caught
and leaves it. An upload of a kind the model has no tower for is refused before it is stored.
Needs the ``demo`` extra (``pip install "medmvl[demo]"``: gradio).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import hydra
from omegaconf import DictConfig

from medmvl.apps.gradio_app import DemoSettings, build_app, disable_telemetry, served_kinds
from medmvl.apps.uploads import UploadFolder, UploadGate
from medmvl.cli.infer import build_generator

log = logging.getLogger("medmvl.demo")
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name)
)


# seconds the server gets to close after a stop signal before it is interrupted again
CLOSE_TIMEOUT_S = 15.0
RECEIVED: list[str] = []
"""The stop signals received, by name (gradio swallows the :class:`Stopped` they raise while it serves)."""


class Stopped(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGINT, SIGHUP) arrived: gradio closes its server as after Ctrl-C, and the
    process then exits normally, running its exit hooks (the upload folder's removal among them)."""


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM, SIGINT and SIGHUP into :class:`Stopped` while the block runs (main thread only).

    A signal the process was started ignoring (``nohup``: SIGHUP) stays ignored; earlier handlers come back
    afterwards.
    """

    def stop(signum: int, _frame: Any) -> None:
        RECEIVED.append(signal.Signals(signum).name)
        if not timers:  # a server close that hangs (an open client connection) is interrupted too
            timers.append(_interrupt_after(CLOSE_TIMEOUT_S, signum))
        raise Stopped(RECEIVED[-1])

    timers: list[threading.Timer] = []

    previous: dict[int, Any] = {}
    for sig in STOP_SIGNALS:
        try:
            if signal.getsignal(sig) is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, stop)
        except ValueError:  # not the main thread: signals are not ours to handle
            break
    try:
        yield
    finally:
        for timer in timers:  # the server closed in time
            timer.cancel()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt_after(seconds: float, signum: int) -> threading.Timer:
    """Send ``signum`` to this process once more after ``seconds`` unless it has exited by then: the second
    :class:`Stopped` breaks out of a server close that waits on a client connection (gradio's threads are
    daemons, so the exit then goes ahead)."""
    timer = threading.Timer(seconds, os.kill, args=(os.getpid(), signum))
    timer.daemon = True
    timer.start()
    return timer


def launch(cfg: DictConfig, *, block: bool = True) -> Any:
    """Build and start the server of a composed ``demo.yaml``; returns the running ``Blocks`` app.

    With ``block=True`` it serves until a stop signal (then returns after gradio closed the server; the
    upload folder goes when the process exits). With ``block=False`` the server runs in a thread
    (``app.local_url``; stop it with ``app.close()``) and the folder goes at exit.
    """
    disable_telemetry()
    with stop_on_signals() if block else nullcontext():
        uploads = UploadFolder(cfg.upload_dir)  # removed at exit, whatever happens next
        settings = DemoSettings(
            title=cfg.title,
            upload_dir=str(uploads.path),
            max_upload_mb=float(cfg.max_upload_mb),
            max_unzipped_mb=float(cfg.max_unzipped_mb),
            temperature=float(cfg.temperature),
            max_new_tokens=int(cfg.max_new_tokens),
            top_p=float(cfg.top_p),
            scan=None if cfg.scan is None else str(cfg.scan),
        )
        generator = build_generator(cfg)
        app = build_app(generator, settings)
        app.queue(default_concurrency_limit=1)  # one model: one generation at a time
        from starlette.middleware import Middleware

        app.launch(
            server_name=cfg.server_name,
            server_port=cfg.server_port,
            max_file_size=f"{cfg.max_upload_mb}mb",
            share=False,
            ssr_mode=False,
            mcp_server=False,
            pwa=False,
            enable_monitoring=False,
            inbrowser=False,
            show_error=True,
            prevent_thread_lock=not block,
            app_kwargs={"middleware": [Middleware(UploadGate, kinds=served_kinds(generator))]},
        )
    return app


@hydra.main(version_base="1.3", config_path="../conf", config_name="demo")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (console script ``medmvl-demo`` and ``demo.py``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        launch(cfg)
    except KeyboardInterrupt as stop:  # a stop signal before the server was up, or while it closed
        if len(RECEIVED) > 1 and RECEIVED[0] == RECEIVED[-1]:
            log.info("stopped by %s: the server had not closed %.0f s after it", RECEIVED[0], CLOSE_TIMEOUT_S)
        else:
            log.info("stopped by %s before serving", str(stop) or "SIGINT")
        return
    how = f" by {RECEIVED[-1]}" if RECEIVED else ""
    log.info("stopped%s; the upload folder goes as the process exits", how)


if __name__ == "__main__":
    main()
