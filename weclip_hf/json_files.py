"""Files and JSON a user or another program hands to the package (a checkpoint's records, a batch job's state, a
model folder's configs, label cells, flags), read so that a malformed one ends in one ValueError naming its source
and what is wrong (`read_json`, `parse_json`): not a regular file (a folder, a FIFO that would block the read, a
device, a link loop), over `MAX_JSON_BYTES`, not UTF-8, not JSON, nested past what Python's parser takes (a
RecursionError otherwise), a key given twice (``json`` keeps the last silently), NaN, Infinity or a number out of
float range (``1e999`` reads as inf), an integer of more digits than Python converts, or a top level of another
type than the one expected. Other files (images, inputs to hash, metadata) are opened by `open_regular_file` and
`read_regular_file`, which refuse what is no regular file, a FIFO included, without waiting on it.

Imports the standard library only: the module ships with a saved model's remote code (`image_reading`'s opener).
"""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

# The largest JSON file read: this package's are a few KB (a checkpoint's records, a job's state, a model's configs);
# a larger one would be read whole, and parsed into Python objects of ~10x its size, before anything could refuse it.
MAX_JSON_BYTES = 64 * 2**20

_TYPE_NAMES = {dict: "a JSON object ({...})", list: "a JSON array ([...])"}


class NotJSONError(ValueError):
    """Text that is no JSON at all (a syntax error, bytes that are not UTF-8), which a caller may read otherwise (a
    flag's bare word); JSON that parses but is refused (NaN, a key twice, ...) raises a plain ValueError."""


class _Refused(ValueError):
    """A value the parsing hooks below refuse (the message names the source)."""


def _json_type(value: Any) -> str:
    """How JSON names the type of a parsed ``value``."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _unique_keys(source: str) -> Any:
    """An ``object_pairs_hook`` building a dict, refusing a key given twice in one object."""

    def build(pairs: list[tuple[str, Any]]) -> dict:
        built = dict(pairs)
        if len(built) < len(pairs):  # name the first key given again
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    raise _Refused(
                        f"{source}: the key {key!r} is given twice in one object (which value holds cannot be told)."
                    )
                seen.add(key)
        return built

    return build


def _finite_float(source: str) -> Any:
    """A ``parse_float`` refusing numbers out of float range (``1e999`` would read as inf)."""

    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise _Refused(f"{source}: the number {text[:40]} is out of the range of a float.")
        return value

    return parse


def _no_constant(source: str) -> Any:
    """A ``parse_constant`` refusing NaN, Infinity and -Infinity (not JSON; Python's ``json`` writes them)."""

    def parse(name: str) -> float:
        raise _Refused(
            f"{source}: holds {name}, which is no JSON value (a finite number or null was expected)."
        )

    return parse


def utf8_text(data: bytes, source: str, error: type[ValueError] = ValueError) -> str:
    """``data`` decoded as UTF-8; ``error`` naming ``source`` and the first byte that is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(
            f"{source}: not UTF-8 text (byte {err.start} is {data[err.start : err.start + 1]!r})."
        ) from None


def parse_json(
    text: str | bytes, source: str, *, allow_nan: bool = False, error: type[ValueError] = ValueError
) -> Any:
    """``text`` parsed as JSON (bytes as UTF-8), its source (a file, a flag) named in any refusal (module docstring);
    ``allow_nan``: NaN and Infinity read as floats (a log of a diverged run's losses).

    Raises:
        ``error`` (a ValueError): naming ``source`` and the problem (the line and column of a syntax error); for
            text that is no JSON at all, `NotJSONError` where ``error`` is ValueError itself.
    """
    syntax_error = NotJSONError if error is ValueError else error
    if isinstance(text, bytes):
        text = utf8_text(text, source, syntax_error)
    hooks = (
        {} if allow_nan else {"parse_float": _finite_float(source), "parse_constant": _no_constant(source)}
    )
    try:
        return json.loads(text, object_pairs_hook=_unique_keys(source), **hooks)
    except json.JSONDecodeError as err:
        raise syntax_error(
            f"{source}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})."
        ) from None
    except _Refused as err:
        raise error(str(err)) from None
    except RecursionError:
        raise error(f"{source}: its arrays or objects nest too deep for Python's JSON parser.") from None
    except ValueError as err:  # int() of more digits than sys.get_int_max_str_digits()
        raise error(f"{source}: holds an integer too long to read ({str(err).split(';')[0]}).") from None


class NotAFileError(ValueError, OSError):
    """A path that holds no regular file; the message says what it holds instead. An OSError too, as what
    ``open`` raises for a file that cannot be read."""


def open_regular_file(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for reading in binary, without blocking: a FIFO (whose read would wait for a writer), a
    socket, a device or a folder is refused, checked on what was opened (no other file can take its place between
    a check and the open).

    Raises:
        FileNotFoundError, or OSError (a link loop, no permission): as ``open`` does.
        NotAFileError: what is there instead.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotAFileError(
            f"it is {'a folder' if stat.S_ISDIR(mode) else 'a FIFO, socket or device'}, not a file"
        )
    return os.fdopen(fd, "rb")


def check_regular_file(path: str | os.PathLike, *, error: type[ValueError] = ValueError) -> None:
    """Refuse a ``path`` that holds no regular file (`open_regular_file`), opened and closed unread.

    Raises:
        FileNotFoundError: no file at ``path``.
        ``error`` (a ValueError): naming ``path`` and what is there instead (a link loop: "cannot be read").
    """
    with _refusing(path, error), open_regular_file(path):
        pass


@contextmanager
def _refusing(path: str | os.PathLike, error: type[ValueError]) -> Iterator[None]:
    """Turn the OSErrors of opening or reading ``path`` (but no file there) into ``error`` naming it."""
    try:
        yield
    except NotAFileError as err:
        raise error(f"{path}: {err}.") from None
    except FileNotFoundError:
        raise
    except OSError as err:  # a link loop, no permission
        raise error(f"{path}: cannot be read ({err.strerror}).") from None


def read_regular_file(
    path: str | Path, *, max_bytes: int = MAX_JSON_BYTES, error: type[ValueError] = ValueError
) -> bytes:
    """The bytes of file ``path`` (`open_regular_file`: a FIFO is refused, not waited on), at most ``max_bytes``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ``error`` (a ValueError): naming ``path`` and what is there instead (a link loop: "cannot be read").
    """
    with _refusing(path, error), open_regular_file(path) as stream:
        data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error(f"{path}: more than {max_bytes:,} bytes, larger than any such file read here may be.")
    return data


def read_json(
    path: str | Path,
    *,
    expect: type | None = None,
    allow_nan: bool = False,
    max_bytes: int = MAX_JSON_BYTES,
    error: type[ValueError] = ValueError,
) -> Any:
    """The JSON of file ``path`` (`read_regular_file`: a FIFO is refused, not waited on), checked as the module
    docstring says; ``expect``: the type of its top level (dict, list).

    Raises:
        FileNotFoundError: no file at ``path``.
        ``error`` (a ValueError): naming ``path`` and the problem.
    """
    data = read_regular_file(path, max_bytes=max_bytes, error=error)
    value = parse_json(data, str(path), allow_nan=allow_nan, error=error)
    if expect is not None and not isinstance(value, expect):
        raise error(
            f"{path}: holds a JSON {_json_type(value)}, expected {_TYPE_NAMES.get(expect, expect.__name__)}."
        )
    return value


def read_json_if_present(path: str | Path, **options: Any) -> Any:
    """`read_json` of ``path``, None where nothing is there (a dangling link or a folder is refused, not absent)."""
    return read_json(path, **options) if os.path.lexists(path) else None
