"""Running a model over many inputs, resumably and in several processes (`examples/segment.py`,
`examples/generate_pseudo_labels.py`): one set of output files per input.

- Every file is written atomically (a hidden temporary file in the same folder, flushed to disk, then a rename),
  so an interrupted run, or a power loss, leaves whole files or none; an input whose last file exists is done, and
  a re-run skips it (a label map that cannot be read all the same is redone: `is_whole_image`).
- Each output's record names the input it was made from, by content (`content_fingerprint`): a re-run skips an
  output only if this run's input of that name is the same, and refuses one made from another input
  (`check_recorded_inputs`), rather than reporting another input's result as this one's; a damaged record is read
  as none (`read_input_record`), so that it is refused or redone as such rather than stopping every run. A record
  written before its outputs may list them (``"outputs"``, `recorded_outputs`): what a later run may delete as that
  run's.
- Process ``rank`` of ``world_size`` takes inputs ``rank, rank + world_size, ...`` (`process_share`); the inputs
  of a batch are run in groups of one size (`group_by_size`).
- `check_run_settings` records the settings that change the outputs in ``.state/settings.json``: a re-run with
  other settings is refused (`SettingsChanged`) rather than mixing two kinds of outputs in one folder. A model
  given as a local folder is recorded by its resolved path (`comparable_path`: the same folder however given) and
  by its weights and config.json (`weights_sha256`), so that another model saved at the same path is another
  setting; a Hub id by those of the revision it resolves to (`model_folder`: its snapshot in the Hub cache), so
  that a repository moved to other weights is one too; so is its image processor (`image_processor_setting`). With
  --overwrite_output_dir the run starts over instead (`check_run_settings_or_start_over`): the writer removes what
  the earlier run wrote, by its records.
- While a run rewrites a folder whose finished outputs are read as a whole (a dataset's metadata), the folder is
  marked unfinished (`mark_unfinished`, until `mark_finished`) and those outputs are removed first, so that an
  interrupted run leaves no folder that reads as the earlier result with some of the new files in it; readers
  refuse a marked folder (`check_finished`).
- Each process lists the inputs it could not read in ``.state/skipped-<rank>.json`` (`write_skipped`); the main
  process merges this run's (`read_skipped`) once every process is done.
- A job writes no links: one among its outputs was planted there, and writing or deleting through it would change
  another folder's files, so `check_no_links` refuses it before anything is written, and the removal helpers
  (`remove_file`, `remove_temporary_files`) never follow one.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import os
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from PIL import Image
from transformers.utils import cached_file

from .wording import counted

STATE_DIR = ".state"  # hidden: `datasets` and globs skip it
UNFINISHED = "unfinished.json"  # in STATE_DIR from `mark_unfinished` to `mark_finished`
# the names of `write_atomic`'s temporary files; an earlier version's were ".{name}.tmp-{pid}"
TEMPORARY_PREFIX = ".tmp-"
TEMPORARY_PATTERNS = (f"{TEMPORARY_PREFIX}*", ".*.tmp-*")
SETTINGS = "settings.json"  # in STATE_DIR: `check_run_settings` writes it before any output
OUTPUTS = "outputs"  # in an input's record: the files written for it, relative to the output folder
WRITER = "writer"  # in SETTINGS: the script that writes the folder


class SettingsChanged(ValueError):
    """The output folder holds a run with other settings (`check_run_settings`)."""


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a hidden temporary file next to ``path``, flush it to disk (fsync: a power loss after
    the rename must not leave an empty or cut-short file under the final name), then rename it to ``path``. The
    temporary name is short (`TEMPORARY_PREFIX`, the process id and a random part), so that any name the file system
    takes for ``path`` can be written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TEMPORARY_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        write(tmp)
        with open(tmp, "r+b") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def is_whole_image(path: str | Path) -> bool:
    """Whether ``path`` is an image file read to its end with matching checksums (PIL's ``verify``): False for a
    missing, empty or cut-short one (a power loss after its rename), which a re-run then redoes."""
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError):  # PIL's UnidentifiedImageError is an OSError, a bad checksum a SyntaxError
        return False
    return True


def save_image(image: Image.Image, path: str | Path, **options) -> Path:
    """Save a PIL image atomically, in the format of ``path``'s suffix (``options``: the format's, for PIL)."""
    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise ValueError(f"path {str(path)!r} needs an image suffix (.png, .jpg, ...), got {path.suffix!r}.")
    return write_atomic(path, lambda tmp: image.save(tmp, format=image_format, **options))


def save_overlay(figure: Image.Image, path: str | Path) -> Path:
    """Save an overlay figure (a preview) as `save_image` does, a PNG at compression level 1: measured on a 1000x750
    figure of photos, 48 ms instead of 156 ms at PIL's default level 6, for a file 6% larger."""
    return save_image(figure, path, compress_level=1)


def save_json(data, path: str | Path) -> Path:
    """Write ``data`` as JSON atomically (no NaN: JSON cannot hold it)."""
    text = json.dumps(data, indent=2, allow_nan=False)
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def copy_file(source: str | Path, path: str | Path) -> Path:
    """Copy a file atomically."""
    return write_atomic(path, lambda tmp: shutil.copyfile(source, tmp))


def save_bytes(data: bytes, path: str | Path) -> Path:
    """Write bytes atomically."""
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))


def process_share(num_inputs: int, rank: int, world_size: int) -> range:
    """The inputs process ``rank`` of ``world_size`` takes: ``rank, rank + world_size, ...``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..world_size - 1 = {world_size - 1}, got {rank}.")
    return range(rank, num_inputs, world_size)


def decoding_workers(num_workers: int | None, device_type: str) -> int:
    """DataLoader workers of a batch job: ``num_workers`` (``--num_workers``) if given, else 2 on an accelerator
    and 0 on the CPU (where workers would take the cores of the model's threads)."""
    if num_workers is not None:
        return num_workers
    return 0 if device_type == "cpu" else 2


def group_by_size(items: list[dict], key: str = "pixel_values") -> list[list[dict]]:
    """``items`` in groups whose tensors ``item[key]`` have one shape (one forward each), in order of appearance."""
    groups: dict[tuple, list[dict]] = {}
    for item in items:
        groups.setdefault(tuple(item[key].shape), []).append(item)
    return list(groups.values())


def wants_overlay(index: int, num_overlays: int) -> bool:
    """Whether the input at ``index`` gets an overlay: one of the first ``num_overlays`` (--num_overlays; -1: all)."""
    return num_overlays < 0 or index < num_overlays


def sha256_of(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_fingerprint(value: Any) -> dict[str, int | str] | None:
    """What an input is, by content: ``{"size", "sha256"}`` of its bytes: a file's (a path, or a ``{"bytes":
    None, "path"}`` dict as ``datasets`` stores images), stored bytes, or an array's (a PIL image's) values with
    its dtype and shape; None for None. Cheap next to running a model on it."""
    if value is None:
        return None
    if isinstance(value, dict) and value.get("bytes") is None:
        value = value.get("path")
    if isinstance(value, (str, os.PathLike)):
        return {"size": os.path.getsize(value), "sha256": sha256_of(value)}
    if isinstance(value, dict):
        data = value["bytes"]
    else:
        array = np.ascontiguousarray(np.asarray(value))
        data = f"{array.dtype.str}{array.shape}".encode() + array.tobytes()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def read_record(path: str | Path) -> dict | None:
    """The JSON record at ``path``, or None where there is none. Raises ValueError naming a file that holds no
    record (edited or damaged: the writers write records whole)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        record = err
    if not isinstance(record, dict):
        raise ValueError(
            f"{path} holds no record ({record}): a file of an earlier run's state, edited or damaged. Choose "
            "another --output_dir."
        )
    return record


def read_input_record(path: str | Path) -> dict | None:
    """The record of one input's outputs at ``path`` (`read_record`), or None where there is none or it is damaged
    (edited, or cut short): that input's outputs are then of an input that cannot be told, refused or redone as
    those without a record (`check_recorded_inputs`), rather than stopping every run over the folder."""
    try:
        return read_record(path)
    except ValueError:  # the file holds no record
        return None


def recorded_outputs(path: str | Path, output_dir: str | Path, folders: Iterable[str]) -> list[Path] | None:
    """The files the input record at ``path`` lists as written for its input (``"outputs"``: paths relative to
    ``output_dir``), or None where it lists none (no record, a damaged one, or one of a version that did not list
    them). Raises ValueError for a list that is not one of files inside ``folders`` (the writer's output folders,
    relative to ``output_dir``): a record names only files its run wrote there."""
    record = read_input_record(path)
    if record is None or OUTPUTS not in record:
        return None
    listed, output_dir = record[OUTPUTS], Path(output_dir)
    if not isinstance(listed, list) or not all(isinstance(name, str) for name in listed):
        raise ValueError(
            f"{path} lists its outputs as {listed!r}, not as a list of paths: edited or damaged."
        )
    paths = [output_dir / name for name in listed]
    inside = [output_dir / folder for folder in folders]
    if outside := [
        p for p in paths if ".." in p.parts or not any(p.parent.is_relative_to(f) for f in inside)
    ]:
        raise ValueError(f"{path} lists outputs outside {sorted(folders)}: {outside[:3]}: edited or damaged.")
    return paths


def check_recorded_inputs(
    output_dir: str | Path,
    recorded: dict[str, dict | None],
    current: Callable[[str], dict | None],
    overwrite: bool,
) -> tuple[set[str], set[str]]:
    """(done, changed): the outputs an earlier run finished (``recorded``: output name -> the record of the input
    it was made from, ``{"source", "input"}``; None where it has none) split into those made from this run's input
    of that name (``current(name)``, a record of the same form; compared by ``input``) and the others, among them
    those whose input cannot be read now (``current(name)`` None: a broken link, a file not readable).

    Raises ValueError naming the changed ones, or else the unreadable ones, unless ``overwrite``
    (--overwrite_output_dir: the caller redoes them, and lists an unreadable one as skipped): an output of another
    input is neither kept as this one's nor replaced without a word, and one whose input cannot be read now (a drive
    not mounted, say) is not removed without a word."""
    done, changed, unreadable = set(), {}, []
    for name in sorted(recorded):
        record, now = recorded[name], json.loads(json.dumps(current(name)))  # tuples -> lists, as read back
        if now is None:
            unreadable.append(name)
            continue
        if record is not None and record.get("input") == now["input"]:
            done.add(name)
        else:
            changed[name] = (record, now)
    if changed and not overwrite:
        shown = [
            f"{name!r} made from {record['source']}, not from this run's {now['source']} (their contents differ)"
            if record is not None and "input" in record
            else f"{name!r} without a record of its input (written by a version before inputs were recorded, or "
            "not by this script; or its record damaged)"
            for name, (record, now) in changed.items()
        ]
        raise ValueError(
            f"{output_dir} holds {counted(len(changed), 'output')} of other inputs under the names of this run's "
            f"inputs, which a re-run would take as done: {some_of(shown, separator='; ')}. Choose another "
            "--output_dir, or give --overwrite_output_dir to replace them with this run's."
        )
    if unreadable and not overwrite:
        raise ValueError(
            f"{output_dir} holds the outputs of {counted(len(unreadable), 'input')} that an earlier run did and this "
            f"run cannot read ({some_of(list(map(repr, unreadable)))}: a broken link, a file not readable). Fix them "
            "and re-run, or give --overwrite_output_dir to drop their outputs (they are then listed as skipped)."
        )
    return done, {*changed, *unreadable}


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


def mark_unfinished(output_dir: str | Path, writer: str, finished_outputs: Iterable[str | Path]) -> None:
    """Mark ``output_dir`` as being rewritten by ``writer`` (the script, named by `check_finished`), then remove
    ``finished_outputs`` (the files a finished run writes last, which make the folder readable as a result), so
    that a run killed before `mark_finished` leaves no folder read as the old result mixed with new files."""
    save_json({"writer": writer}, Path(output_dir) / STATE_DIR / UNFINISHED)
    for path in finished_outputs:
        remove_file(path, output_dir)


def mark_finished(output_dir: str | Path) -> None:
    """Lift `mark_unfinished`'s mark: every output of the run is written."""
    remove_file(Path(output_dir) / STATE_DIR / UNFINISHED, output_dir)


def check_finished(folder: str | Path, flag: str) -> None:
    """Refuse a ``folder`` (given as ``flag``) that a run marked unfinished (`mark_unfinished`): killed or still
    running, it may hold files of two runs."""
    record = read_record(Path(folder) / STATE_DIR / UNFINISHED)
    if record is not None:
        raise ValueError(
            f"{flag} {folder} holds the outputs of an unfinished run of {record['writer']} (interrupted, or still "
            "running): some of its files may be an earlier run's. Re-run the command that wrote it (it continues "
            f"where it stopped), or choose another {flag}."
        )


def run_resumable(main: Callable[[], Any], exit_status: Callable[[Any], int] = lambda result: 0) -> NoReturn:
    """Run a job's ``main`` and exit with ``exit_status`` of its result; on Ctrl-C say that the same command
    continues it (every file written is whole) and exit with 130, without a traceback."""
    try:
        status = exit_status(main())
    except KeyboardInterrupt:
        print("Interrupted: run the same command again to continue.")
        raise SystemExit(130) from None
    raise SystemExit(status)


def write_skipped(output_dir: str | Path, rank: int, skipped: list[dict]) -> Path:
    """List the inputs process ``rank`` could not read (each ``{"input", "reason"}``) in its state file."""
    return save_json(skipped, Path(output_dir) / STATE_DIR / f"skipped-{rank}.json")


def read_skipped(output_dir: str | Path, num_processes: int, done: Callable[[str], bool]) -> list[dict]:
    """The skipped inputs of the state files of this run's ``num_processes`` processes, once each, sorted, except
    those now ``done`` (an input fixed and processed by a later run). The files of other processes (an earlier run's
    with more processes, whose inputs this run tried again: their reasons are stale) are removed; a damaged state
    file (edited, or cut short) is left out with a warning naming it."""
    found: dict[str, dict] = {}
    state = Path(output_dir) / STATE_DIR
    ours = [state / f"skipped-{rank}.json" for rank in range(num_processes)]
    for stale in set(state.glob("skipped-*.json")) - set(ours):
        remove_file(stale, output_dir)
    for path in (path for path in ours if path.exists()):
        try:
            entries = json.loads(path.read_text(encoding="utf-8"))
            names = [entry["input"] for entry in entries]
        except (ValueError, TypeError, KeyError) as err:
            warnings.warn(
                f"{path}: not a list of skipped inputs ({err!r}); left out of the report.", stacklevel=2
            )
            continue
        for name, entry in zip(names, entries):
            if not done(name):
                found[name] = entry
    return [found[k] for k in sorted(found)]


def some_of(entries: list[str], most: int = 5, separator: str = ", ") -> str:
    """The first ``most`` of ``entries`` joined by ``separator``, and how many more (what messages list)."""
    more = f"{separator}and {len(entries) - most} more" if len(entries) > most else ""
    return separator.join(entries[:most]) + more


def folder_contents(folder: Path, most: int = 10, only: Callable[[Path], bool] | None = None) -> str:
    """The names in ``folder`` (those ``only`` takes, when given), folders with a trailing ``/``: the first ``most``
    and how many more, sorted with code (``.py``) and hidden files last (a saved model's copies of its code say
    little)."""
    names = sorted(
        (p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if only is None or only(p)),
        key=lambda name: (name.endswith(".py") or name.startswith("."), name),
    )
    return some_of(names, most)


def walk_entries(folder: str | Path) -> Iterator[os.DirEntry]:
    """Every entry under ``folder``, recursively; links are listed, never followed (nothing for a missing
    ``folder``)."""
    try:
        with os.scandir(folder) as scan:
            entries = list(scan)
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        yield entry
        if entry.is_dir(follow_symlinks=False):
            yield from walk_entries(entry.path)


def check_no_links(output_dir: str | Path, names: Iterable[str]) -> None:
    """Refuse links among a script's outputs ``names`` (paths relative to ``output_dir``: its files, and its
    folders with everything in them): the script writes none, so a link there was planted, and files written or
    deleted through it would be another folder's. ``output_dir`` itself may be a link (to a larger disk, say)."""
    output_dir = Path(output_dir)
    links = []
    for path in (output_dir / name for name in names):
        links += [path] if path.is_symlink() else [Path(e.path) for e in walk_entries(path) if e.is_symlink()]
    if links:
        shown = some_of([f"{link} -> {os.readlink(link)}" for link in links])
        raise ValueError(
            f"--output_dir {output_dir} holds links where this script writes its outputs ({shown}): the "
            "files it writes or deletes there would be another folder's. Remove the links, or choose another "
            "--output_dir."
        )


def remove_file(path: str | Path, root: str | Path) -> None:
    """Delete the file ``path`` under the folder ``root`` if it exists (a link: the link, never its target).
    Raises ValueError where a folder between ``root`` and ``path`` is a link: the file would be another folder's."""
    path, root = Path(path), Path(root)
    linked = [f for f in path.parents if f.is_relative_to(root) and f != root and f.is_symlink()]
    if linked:
        raise ValueError(
            f"{linked[-1]} is a link (to {os.readlink(linked[-1])}): removing {path} would delete a file of "
            "another folder. Remove the link, or choose another --output_dir."
        )
    path.unlink(missing_ok=True)


def remove_temporary_files(folders: Iterable[str | Path]) -> None:
    """Delete the temporary files that interrupted atomic writes left in ``folders`` (recursively; links are not
    followed)."""
    for folder in folders:
        for entry in walk_entries(folder):
            temporary = any(fnmatch.fnmatchcase(entry.name, pattern) for pattern in TEMPORARY_PATTERNS)
            if temporary and not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)


__all__ = [
    "OUTPUTS",
    "SETTINGS",
    "STATE_DIR",
    "WRITER",
    "SettingsChanged",
    "check_finished",
    "check_no_links",
    "check_recorded_inputs",
    "check_run_settings",
    "check_run_settings_or_start_over",
    "content_fingerprint",
    "copy_file",
    "decoding_workers",
    "folder_contents",
    "group_by_size",
    "image_processor_setting",
    "is_whole_image",
    "mark_finished",
    "mark_unfinished",
    "process_share",
    "read_input_record",
    "read_record",
    "read_skipped",
    "recorded_outputs",
    "remove_file",
    "remove_temporary_files",
    "run_resumable",
    "save_bytes",
    "save_image",
    "save_json",
    "save_overlay",
    "sha256_of",
    "some_of",
    "walk_entries",
    "wants_overlay",
    "weights_key",
    "weights_sha256",
    "write_atomic",
    "write_skipped",
]
