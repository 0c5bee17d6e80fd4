"""``medmvl-assets``: where the cache is, fetching a reference (here a local path), clear failures."""

from __future__ import annotations

from medmvl.cli.assets import main


def test_where_prints_cache_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDMVL_CACHE", str(tmp_path))
    assert main(["where"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path.resolve())


def test_fetch_local_path_and_missing(tmp_path, capsys):
    present = tmp_path / "a.txt"
    present.write_text("x")
    assert main(["fetch", str(present)]) == 0
    assert capsys.readouterr().out.strip() == str(present)
    assert main(["fetch", str(tmp_path / "missing.txt"), "pypi://broken"]) == 1
    err = capsys.readouterr().err
    assert "missing.txt" in err and "malformed reference" in err
