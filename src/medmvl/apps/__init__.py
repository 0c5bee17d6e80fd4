"""Applications on top of the library: the Gradio app (``gradio_app``), its scan viewer (``viewer``), the
upload checks and slice rendering behind both (``scans``), and the upload folder and gate that keep
uploads to what the model serves and remove them when the demo stops (``uploads``)."""
