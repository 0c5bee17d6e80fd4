"""Connectors map encoder tokens ``[b, n, d_enc]`` into the LLM's embedding space ``[b, m, d_llm]``.

Every connector is configured with ``_partial_: true`` and completed by :class:`~medmvl.models.vlm.MedVLM`
as ``connector(in_dim=encoder.out_dim, out_dim=llm_hidden, grid=encoder.grid)``; it exposes ``num_tokens``.
"""
