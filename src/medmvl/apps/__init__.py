"""Applications on top of the library: the Gradio app (``gradio_app``), its scan viewer (``viewer``) and the
upload checks and slice rendering behind both (``scans``)."""
