"""The embedded offline demo (``make train``): real scans from PyPI distributions turned into VQA sets
(``sources``, ``build_2d``, ``build_3d``, questions, captions, renders), caption pre-training of its
encoders (``caption_pretrain``), its data modules and its held-out report. The core packages never import it."""
