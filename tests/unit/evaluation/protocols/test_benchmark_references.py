"""conf/benchmark/*.yaml reference rows: well-formed, under the benchmark's own columns, and tabulated."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from medmvl.evaluation.protocols.run import build_protocol
from medmvl.evaluation.protocols.table import benchmark_table
from tests.conftest import CONF_DIR

BENCHMARKS = sorted(p.stem for p in (CONF_DIR / "benchmark").glob("*.yaml"))


def compose_benchmark(name: str) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="evaluate", overrides=[f"benchmark={name}"])


def test_every_benchmark_is_listed() -> None:
    assert {"vqa_rad", "slake", "path_vqa", "m3d_vqa", "m3d_cap"} <= set(BENCHMARKS)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_reference_rows_fit_the_columns(name: str) -> None:
    bench = compose_benchmark(name).benchmark
    titles = {c["title"] for c in OmegaConf.to_container(bench.columns, resolve=True)}
    references = OmegaConf.to_container(bench.references, resolve=True)
    assert isinstance(references, list)
    for ref in references:
        assert set(ref) == {"model", "source", "values"}, ref
        assert isinstance(ref["model"], str) and ref["model"].strip(), ref
        assert isinstance(ref["source"], str) and ref["source"].strip(), ref
        assert ref["values"] and set(ref["values"]) <= titles, (ref["values"], titles)
        for value in ref["values"].values():
            assert isinstance(value, int | float) and not isinstance(value, bool)
            assert 0 <= value <= 100, ref


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_table_prints_the_rows(name: str) -> None:
    cfg = compose_benchmark(name)
    bench = cfg.benchmark
    columns = OmegaConf.to_container(bench.columns, resolve=True)
    references = OmegaConf.to_container(bench.references, resolve=True)
    empty = {"overall": {}}
    table = benchmark_table(bench.title, columns, empty, empty, build_protocol(cfg.protocol), references)
    lines = table.splitlines()
    assert lines[2] == "| model | scored by | " + " | ".join(c["title"] for c in columns) + " |"
    for ref in references:
        cells = [f"{ref['values'][c['title']]:.2f}" if c["title"] in ref["values"] else "-" for c in columns]
        row = f"| {ref['model']} | published ({ref['source']}) | " + " | ".join(cells) + " |"
        assert row in lines, row
    assert ("No published reference rows" in table) == (not references)


def test_llava_med_rows_are_entered() -> None:
    references = OmegaConf.to_container(compose_benchmark("vqa_rad").benchmark.references, resolve=True)
    first = references[0]
    assert first["model"] == "LLaVA-Med (From LLaVA)" and "2306.00890" in first["source"]
    assert first["values"] == {"Open": 61.52, "Closed": 84.19}
