"""demo_report wired as train.py's post_train hook: its metrics join the training metrics."""

from __future__ import annotations

import json
from pathlib import Path

from medmvl.cli.train import train
from tests.conftest import compose_train
from tests.helpers.colour import write_colour_set


def test_post_train_hook_writes_demo_results(tmp_path: Path) -> None:
    ann = write_colour_set(tmp_path / "data", n=4)
    hook = "{_target_:medmvl.demo.report.demo_report,_partial_:true,batch_size:4,max_new_tokens:3}"
    cfg = compose_train(
        [
            "trainer.max_steps=1",
            f"data.annotations={ann}",
            f"data.val_annotations={ann}",
            f"data.image_dir={tmp_path / 'data' / 'imgs'}",
            "callbacks.model_checkpoint=null",
            f"post_train={hook}",
        ],
        output_dir=tmp_path / "run",
    )
    metrics = train(cfg)
    results = json.loads((tmp_path / "run" / "demo_results.json").read_text())
    assert metrics["demo_results"] == str(tmp_path / "run" / "demo_results.json")
    assert results["n_open"] == 4 and results["n_closed"] == 0 and results["heldout_accuracy"] is None
    assert set(results["per_question_type"]) == {"all"}
