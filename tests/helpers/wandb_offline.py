"""Read the records of an offline W&B run (``run-<id>.wandb``) for tests.

wandb >= 0.20 writes offline runs from its Go core and ships no Python reader, so this reads the file
format directly: a 7-byte header (``:W&B``, 0xBEE1, version 0), then the LevelDB log format (32 KiB
blocks; each chunk has a 7-byte header ``crc32 | length uint16 | type``, types full=1, first=2,
middle=3, last=4) whose assembled payloads are ``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
CHUNK_HEADER = 7
FILE_HEADER = b":W&B\xe1\xbe\x00"


def read_records(path: Path) -> list[Any]:
    """Every ``Record`` of a ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if not data.startswith(FILE_HEADER):
        raise ValueError(f"{path}: not a W&B run file (header {data[:7]!r})")
    records, parts, pos = [], [], len(FILE_HEADER)
    while pos + CHUNK_HEADER <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER:  # block trailer padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + CHUNK_HEADER])
        parts.append(data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length])
        pos += CHUNK_HEADER + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            records.append(record)
            parts = []
        elif kind == 0:  # zero padding to the block end
            pos += BLOCK - pos % BLOCK if pos % BLOCK else 0
            parts = []
    return records


def run_contents(run_dir: Path) -> dict[str, Any]:
    """``config`` (key -> value) and ``history`` (one dict per logged row, nested values as dicts) of the
    offline run in ``run_dir``."""
    (run_file,) = run_dir.glob("run-*.wandb")
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    for record in read_records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:  # flat keys come as nested_key of length 1
                *parents, last = [item.key] if item.key else list(item.nested_key)
                node = row
                for name in parents:
                    node = node.setdefault(name, {})
                node[last] = json.loads(item.value_json)
            history.append(row)
    return {"config": config, "history": history}
