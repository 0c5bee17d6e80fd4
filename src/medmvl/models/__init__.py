"""Model parts: vision encoders, connectors, the language model and :class:`MedVLM` composing them.

Shape notation used in comments throughout ``medmvl.models``::

    b      batch size (samples)
    k      images in a batch (all samples, placeholder order)
    c      channels of an image or volume; d_enc / d_llm: encoder / LLM hidden width
    h, w   image height, width;  d: depth (slices) of a volume
    n      encoder tokens per image (prod(grid));  m: connector tokens per image (num_tokens)
    t      text length in tokens (image tokens already expanded)
    s      supervised positions in a batch
    v      vocabulary size
"""
