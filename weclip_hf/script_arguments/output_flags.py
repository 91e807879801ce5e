"""The checks of where a run's results go, at parse time: an output path that is an existing file
(`check_output_path`) and a --hub_token that holds whitespace (`check_hub_token`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..hub import has_stray_characters


def check_hub_token(parser: argparse.ArgumentParser, token: str | None) -> None:
    """Refuse a --hub_token that holds whitespace or control characters (`weclip_hf.hub.has_stray_characters`; say
    ``--hub_token "$(cat token.txt)"`` of a file with Windows line ends): the HTTP library would refuse it at the
    upload, after the run's work, in an error quoting it. The message never shows the token."""
    if has_stray_characters(token):
        parser.error(
            "--hub_token holds whitespace or control characters (a line end copied from a file?): strip it."
        )


def check_output_path(parser: argparse.ArgumentParser, flag: str, path: str, folder: bool = True) -> None:
    """Refuse an output ``path`` (given as ``flag``: a ``folder``, else a file) that is an existing file, or lies
    inside one: the script would fail as it first writes there, after loading its model, in a traceback
    (NotADirectoryError, FileExistsError)."""
    path = Path(path)
    existing = next((p for p in ((path,) if folder else ()) + tuple(path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is" if existing == path else f"is inside {str(existing)!r}, which is"
        parser.error(f"{flag} {str(path)!r} {where} an existing file, not a folder.")
