"""The scan column of the Gradio demo: the file box, the scan's status line and its views.

A 2D image is shown as it is; a 3D volume as three slice views (axial, coronal, sagittal) with one slider
each, opening on the middle slices. This module lays those components out and says what they show for a
scan, both when the page is built and as the updates an upload sends; ``gradio_app`` builds the rest of
the page and wires the events. Checking uploads and rendering slices is :mod:`medmvl.apps.scans`' job.

gradio is imported inside the functions, after ``gradio_app`` has set its environment (telemetry off,
upload folder).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from medmvl.apps.scans import PLANES, Scan, render_slice

VIEW_BUTTONS = ["download", "fullscreen"]  # no "share": it posts to Hugging Face


@dataclass
class ScanViewer:
    """The components of the scan column (gradio components, typed loosely: gradio is imported late).

    Attributes:
        upload: The file box.
        status: One line describing the scan (or saying there is none).
        image: The 2D view (hidden for a volume).
        volume_row: The row of the three slice views (hidden unless a volume is shown).
        slices: The axial, coronal and sagittal views.
        sliders: The slice index of each view.
    """

    upload: Any
    status: Any
    image: Any
    volume_row: Any
    slices: list[Any]
    sliders: list[Any]

    @property
    def outputs(self) -> list[Any]:
        """What an upload updates, in the order of :func:`viewer_updates`."""
        return [self.status, self.image, self.volume_row, *self.slices, *self.sliders]


def scan_views(scan: Scan | None) -> dict[str, Any]:
    """What the page shows for ``scan``: status line, 2D image, three middle slices and slider ranges."""
    is2d, is3d = scan is not None and scan.kind == "2d", scan is not None and scan.kind == "3d"
    shape = scan.shape if is3d else (2, 2, 2)
    return {
        "status": scan.describe() if scan else "No scan: questions are answered from text only.",
        "is2d": is2d,
        "is3d": is3d,
        "image": render_slice(scan, "axial", 0) if is2d else None,
        "slices": [render_slice(scan, p, n // 2) if is3d else None for p, n in zip(PLANES, shape)],
        "sliders": [(max(n - 1, 1), n // 2 if is3d else 0) for n in shape],  # (maximum, value)
    }


def viewer_updates(scan: Scan | None) -> tuple[Any, ...]:
    """The updates of :attr:`ScanViewer.outputs` that show ``scan`` (``None``: no scan)."""
    import gradio as gr

    view = scan_views(scan)
    return (
        view["status"],
        gr.update(value=view["image"], visible=view["is2d"]),
        gr.update(visible=view["is3d"]),
        *(gr.update(value=v) for v in view["slices"]),
        *(gr.update(maximum=m, value=v) for m, v in view["sliders"]),
    )


def slice_update(scan: Scan | None, plane: str, index: float) -> Any:
    """The ``plane`` view at slice ``index`` of a volume; no change when no volume is shown."""
    import gradio as gr

    if scan is None or scan.kind != "3d":
        return gr.update()
    return render_slice(scan, plane, int(index))


def build_viewer(
    file_types: Sequence[str], start: dict[str, Any], label: str = "Scan (2D image or 3D volume)"
) -> ScanViewer:
    """Lay out the scan column showing ``start`` (a :func:`scan_views` result); call inside ``gr.Blocks``.

    ``file_types``: the suffixes the file box offers (the browser refuses others before uploading).
    """
    import gradio as gr

    with gr.Column(scale=5):
        upload = gr.File(label=label, file_types=list(file_types), type="filepath")
        status = gr.Markdown(start["status"], elem_id="scan-status")
        image = gr.Image(
            start["image"],
            label="Image",
            interactive=False,
            visible=start["is2d"],
            buttons=VIEW_BUTTONS,
        )
        volume_row, slices, sliders = _slice_views(start)
    return ScanViewer(upload, status, image, volume_row, slices, sliders)


def _slice_views(start: dict[str, Any]) -> tuple[Any, list[Any], list[Any]]:
    """The row of three slice views, each over its slider: ``(row, images, sliders)``."""
    import gradio as gr

    images, sliders = [], []
    with gr.Row(visible=start["is3d"], equal_height=True) as row:
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
    return row, images, sliders
