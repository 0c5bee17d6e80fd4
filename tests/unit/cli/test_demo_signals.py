"""``medmvl.cli.demo.stop_on_signals``: a stop signal raises ``Stopped``; a close that hangs is interrupted."""

from __future__ import annotations

import os
import signal
import time

import pytest

import medmvl.cli.demo as demo_cli


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo_cli, "RECEIVED", [])
    monkeypatch.setattr(demo_cli, "CLOSE_TIMEOUT_S", 0.3)


def test_a_close_that_hangs_after_the_signal_is_interrupted_once_more() -> None:
    """As gradio does: the first ``Stopped`` is caught and the server's close then blocks (an open client)."""
    t0 = time.perf_counter()
    with pytest.raises(demo_cli.Stopped), demo_cli.stop_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # serving; the signal ends this at once
        except demo_cli.Stopped:
            time.sleep(10)  # a close that waits on a connection
    assert time.perf_counter() - t0 < 5
    assert demo_cli.RECEIVED == ["SIGINT", "SIGINT"]


def test_a_close_in_time_cancels_the_second_signal() -> None:
    with demo_cli.stop_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except demo_cli.Stopped:
            pass  # closed at once
    time.sleep(0.6)  # past CLOSE_TIMEOUT_S: no second signal arrives (it would raise here)
    assert demo_cli.RECEIVED == ["SIGTERM"]
    assert signal.getsignal(signal.SIGINT) is not None
