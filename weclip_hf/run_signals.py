"""How a training run stops on Ctrl-C / SIGTERM: during the training loop a signal only asks the loop to stop, so
that it can save a checkpoint (`stop_on_signals`); after it, a signal stops the run at once but first says what is
saved and what is not (`explain_signals`); the process exits with the status of a killed process (`exit_status`)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable


@contextlib.contextmanager
def signals_handled_by(handler: Callable):
    """Within the block, Ctrl-C / SIGTERM call ``handler(signum, frame)``; on leaving it, the handlers before it
    are back."""
    handlers = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, previous in handlers.items():
            signal.signal(sig, previous)


@contextlib.contextmanager
def stop_on_signals():
    """Within the block, Ctrl-C / SIGTERM only ask the loop to stop (``stop["signal"]``: the signal number, else
    None) so that it can save a checkpoint; on leaving it they act at once again (final evaluation, saving)."""
    stop = {"signal": None}

    def request_stop(signum, frame):
        stop["signal"] = signum

    with signals_handled_by(request_stop):
        yield stop


@contextlib.contextmanager
def explain_signals(explain: Callable[[int], str], log=print):
    """Within the block, Ctrl-C / SIGTERM stop the run at once, as outside it (SIGINT: `KeyboardInterrupt`,
    SIGTERM: exit status 143 = 128 + 15), but first log ``explain(signum)``: what is saved and what is not."""

    def stop_now(signum, frame):
        log(explain(signum))
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    with signals_handled_by(stop_now):
        yield


def exit_status(metrics: dict) -> int:
    """The process's exit status: 128 + the signal number of a run stopped by SIGINT / SIGTERM (130 / 143, as a
    killed process; the checkpoint is saved, the model is not), else 0."""
    signum = metrics.get("stopped_by_signal")
    return 128 + signum if signum else 0
