"""A job's run that Ctrl-C stops resumably (`run_resumable`): every file written is whole, so the same command
continues it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn


def run_resumable(main: Callable[[], Any], exit_status: Callable[[Any], int] = lambda result: 0) -> NoReturn:
    """Run a job's ``main`` and exit with ``exit_status`` of its result; on Ctrl-C say that the same command
    continues it (every file written is whole) and exit with 130, without a traceback."""
    try:
        status = exit_status(main())
    except KeyboardInterrupt:
        print("Interrupted: run the same command again to continue.")
        raise SystemExit(130) from None
    raise SystemExit(status)
