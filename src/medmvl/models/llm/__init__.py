"""The language model: loading from a hub id, folder, GGUF or config (``loader``), the tokenizer with
its chat template and image tokens (``tokenizer``), and the templates medmvl ships (``templates/``)."""
