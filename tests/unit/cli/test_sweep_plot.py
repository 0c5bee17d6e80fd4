"""The sweep report's bars: the axis starts at zero and the best job is marked."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from medmvl.cli.sweep_report import Job, bar_panel  # noqa: E402


def _panel(metric: str, values: list[float]):
    jobs = [Job(Path(f"j{i}"), i, {}, {metric: v}) for i, v in enumerate(values)]
    fig, ax = plt.subplots()
    bar_panel(ax, jobs, [f"job {i}" for i in range(len(jobs))], metric)
    return fig, ax


def test_close_values_keep_zero_in_view_and_the_best_is_marked() -> None:
    fig, ax = _panel("val/loss", [5.61, 5.595])
    assert ax.get_xlim()[0] == 0.0  # 5.595 vs 5.61 is drawn as the 0.3 % gap it is
    colours = [bar.get_facecolor() for bar in ax.patches]
    assert colours[1] != colours[0]  # the lower loss (job 1) is the best one
    assert [t.get_text() for t in ax.texts] == ["5.61", "5.595  best"]
    assert "lower is better" in ax.get_title()
    plt.close(fig)


def test_higher_is_better_for_accuracies() -> None:
    fig, ax = _panel("heldout_accuracy", [0.5, 0.9, 0.7])
    assert [t.get_text() for t in ax.texts] == ["0.5", "0.9  best", "0.7"]
    assert ax.get_xlim()[0] == 0.0 and "higher is better" in ax.get_title()
    plt.close(fig)
