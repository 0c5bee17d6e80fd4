"""``python demo.py model=<dir>`` / ``medmvl-demo model=<dir>``: serve the Gradio demo of a saved model.

Listens on ``127.0.0.1`` (this machine only) unless ``server_name`` says otherwise; never makes a share
link; analytics off. Uploads go to ``upload_dir`` or a new temporary folder that is removed when the
process exits.
Needs the ``demo`` extra (``pip install "medmvl[demo]"``: gradio).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import Any

import hydra
from omegaconf import DictConfig

from medmvl.apps.gradio_app import DemoSettings, build_app, disable_telemetry
from medmvl.cli.infer import build_generator


def launch(cfg: DictConfig, *, block: bool = True) -> Any:
    """Build and start the server of a composed ``demo.yaml``; returns the running ``Blocks`` app.

    With ``block=False`` the server runs in a thread (``app.local_url``; stop it with ``app.close()``).
    """
    disable_telemetry()
    upload_dir = (
        str(cfg.upload_dir) if cfg.upload_dir is not None else tempfile.mkdtemp(prefix="medmvl-demo-")
    )
    if cfg.upload_dir is None:
        atexit.register(shutil.rmtree, upload_dir, ignore_errors=True)
    settings = DemoSettings(
        title=cfg.title,
        upload_dir=upload_dir,
        max_upload_mb=float(cfg.max_upload_mb),
        max_unzipped_mb=float(cfg.max_unzipped_mb),
        temperature=float(cfg.temperature),
        max_new_tokens=int(cfg.max_new_tokens),
        top_p=float(cfg.top_p),
        scan=None if cfg.scan is None else str(cfg.scan),
    )
    app = build_app(build_generator(cfg), settings)
    app.queue(default_concurrency_limit=1)  # one model: one generation at a time
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
    )
    return app


@hydra.main(version_base="1.3", config_path="../conf", config_name="demo")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (console script ``medmvl-demo`` and ``demo.py``)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    launch(cfg)


if __name__ == "__main__":
    main()
