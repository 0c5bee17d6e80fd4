"""Applications on top of the library: the Gradio app (``gradio_app``) and its upload checks and scan views (``scans``)."""
