"""A job's run settings, recorded in its output folder before any output (`check_run_settings`): a re-run with
other settings is refused (`SettingsChanged`), or with --overwrite_output_dir starts over
(`check_run_settings_or_start_over`). A model is recorded by where it is (`comparable_path`) and by its weights
(`weights_sha256`, in its `model_folder`), its image processor by its settings (`image_processor_setting`).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

from transformers.utils import cached_file

from .atomic_writes import save_json
from .input_records import read_record, sha256_of
from .state_folder import STATE_DIR

SETTINGS = "settings.json"  # in STATE_DIR: `check_run_settings` writes it before any output
WRITER = "writer"  # in SETTINGS: the script that writes the folder


class SettingsChanged(ValueError):
    """The output folder holds a run with other settings (`check_run_settings`)."""


def comparable_path(name: str | None) -> str | None:
    """A local path as its resolved absolute form (``data`` and ``./data/`` are the same folder); a Hub id or
    None as given."""
    return str(Path(name).resolve()) if name and os.path.exists(name) else name


def model_folder(name_or_path: str) -> Path | None:
    """The folder `from_pretrained` reads a model from: a local folder, or for a Hub id its snapshot in the Hub
    cache at the revision the id resolves to now (the Hub's main, or offline the cache's refs/main); None where there
    is neither (a Hub id not in the cache, a path to no folder)."""
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        return folder
    try:
        config = cached_file(
            name_or_path,
            "config.json",
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except OSError:  # no Hub id either
        return None
    return Path(config).parent if config else None


def weights_sha256(name_or_path: str | None) -> dict[str, str] | None:
    """The identity of a model's weights and configuration: the SHA-256 of each safetensors file and of
    ``config.json`` in its `model_folder` (the files `from_pretrained` reads: a local folder's, or a Hub id's at the
    revision it resolves to), by file name; None for no model, or one in no such folder."""
    folder = model_folder(name_or_path) if name_or_path else None
    if folder is None:
        return None
    files = [*sorted(folder.glob("*.safetensors")), *sorted(folder.glob("config.json"))]
    return {p.name: sha256_of(p) for p in files}


def image_processor_setting(processor) -> dict:
    """An image processor's settings as a run setting (its ``to_dict``): a re-run whose model folder holds another
    preprocessor_config.json (other sizes or statistics, other outputs) is another setting. Keys that name the
    processor's class for `AutoProcessor`, not how it processes, are left out."""
    return {k: v for k, v in processor.to_dict().items() if not k.startswith("_") and k != "processor_class"}


def weights_key(model_key: str) -> str:
    """The setting that records the weights of the model named by setting ``model_key``."""
    return f"{model_key}_weights_sha256"


def check_run_settings(
    output_dir: str | Path,
    settings: dict,
    is_main_process: bool,
    wait: Callable[[], None],
    models: tuple[str, ...] = (),
    writer: str | None = None,
):
    """Record ``settings`` (JSON values) in a fresh ``output_dir``, or check them against the recorded ones.

    ``wait``: a barrier of all processes (``PartialState().wait_for_everyone``): the main process records, then
    every process compares. ``models``: the keys of ``settings`` that name a model (a local folder or a Hub id);
    a local folder is recorded by its resolved path (`comparable_path`: ``m``, ``./m/`` and ``/abs/m`` are one
    folder; also where an earlier version recorded it as given), and `weights_sha256` of each is a setting too
    (`weights_key`), so a model saved over the old one at the same path is a changed setting, and one of the
    recorded weights at another path (the project folder moved) is the recorded model.
    ``writer``: the script, recorded too. Raises ValueError for outputs of another writer, and `SettingsChanged`
    naming the settings that differ, or, where a model's weights are found, for outputs of the same model recorded
    without them (by a version before they were recorded, or before a Hub id's were: which weights wrote them
    cannot be told)."""
    path = Path(output_dir) / STATE_DIR / SETTINGS
    settings = {**settings, **{k: comparable_path(settings[k]) for k in models}}
    settings.update({weights_key(k): weights_sha256(settings[k]) for k in models})
    settings = json.loads(json.dumps({**settings, WRITER: writer} if writer else settings))  # tuples -> lists
    if is_main_process and not path.exists():
        save_json(settings, path)
    wait()
    recorded = read_record(path)
    # a model folder recorded as given (by a version before paths were resolved): compared by where it is
    recorded.update({k: comparable_path(recorded[k]) for k in models if k in recorded})
    # a model of the recorded weights is the recorded model wherever it is now (a project folder moved)
    for k in models:
        if settings[weights_key(k)] is not None and recorded.get(weights_key(k)) == settings[weights_key(k)]:
            recorded[k] = settings[k]
    if recorded.get(WRITER, writer) != writer:
        raise ValueError(
            f"{output_dir} holds the outputs of {recorded[WRITER]}, not of {writer}: its files are not this "
            "script's to continue or replace. Choose another --output_dir."
        )
    if WRITER not in recorded:  # written by a version that did not record its writer
        settings.pop(WRITER, None)
    # the same model, whose weights an earlier version did not record (of any model; of a Hub id's: None)
    unknown = [
        k
        for k in models
        if recorded.get(k) == settings[k]
        and recorded.get(weights_key(k)) is None
        and settings[weights_key(k)] is not None
    ]
    # other settings, as far as can be told: a start-over (--overwrite_output_dir) may replace them
    if unknown:
        raise SettingsChanged(
            f"{output_dir} holds outputs of a run that did not record the weights of its model (written before "
            f"they were recorded): whether they come from the model now at {settings[unknown[0]]} cannot be "
            "told. Choose another --output_dir for a run with it."
        )
    changed = sorted(k for k in settings.keys() | recorded.keys() if settings.get(k) != recorded.get(k))
    if changed:
        shown = ", ".join(f"{k}: {recorded.get(k)!r} -> {settings.get(k)!r}" for k in changed)
        replaced = [k for k in models if weights_key(k) in changed and settings[k] == recorded.get(k)]
        note = "".join(f" The model at {settings[k]} is not the one that wrote them." for k in replaced)
        if unrecorded := [k for k in changed if k not in recorded]:
            note += f" ({', '.join(unrecorded)}: not recorded by the version that wrote them.)"
        raise SettingsChanged(
            f"{output_dir} holds outputs of a run with other settings ({shown}).{note} Re-run with the recorded "
            "settings to continue it, or choose another --output_dir."
        )


def check_run_settings_or_start_over(
    output_dir: str | Path,
    settings: dict,
    is_main_process: bool,
    wait: Callable[[], None],
    models: tuple[str, ...],
    start_over: Callable[[], Callable[[], None]] | None,
    removes: str,
    writer: str,
) -> None:
    """`check_run_settings`, and where ``output_dir`` holds a run with other settings, start over
    (--overwrite_output_dir) or refuse.

    ``start_over`` (None without --overwrite_output_dir: the refusal names the flag and what it ``removes``) is
    called in every process, where it reads the earlier run (a refusal there stops them all), and returns the
    removal of that run, which the main process runs once every process has read it; then this run's settings are
    recorded. ``writer``: the script (`check_run_settings`). The removal takes the earlier settings last, so that
    an interrupted start-over is finished by the same command."""
    check = functools.partial(check_run_settings, output_dir, settings, is_main_process, wait, models, writer)
    try:
        check()
    except SettingsChanged as err:
        if start_over is None:
            raise SettingsChanged(
                f"{err} Or give --overwrite_output_dir to start over: it removes {removes}."
            ) from None
        remove = start_over()
        wait()  # every process has read the earlier settings and records
        if is_main_process:
            remove()
        check()  # the main process records this run's settings, the others wait for it
