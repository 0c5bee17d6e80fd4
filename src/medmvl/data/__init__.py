"""Data pipeline: annotation schema, chat-template tokenization, image loading, dataset, collate, datamodule.

Modules are imported where used (``from medmvl.data.schema import load_annotations``); this package file
stays empty of imports so that reading annotations does not pull in torch or Lightning.
"""
