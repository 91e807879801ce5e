"""Running a model over many inputs, resumably and in several processes (`examples/segment.py`,
`examples/generate_pseudo_labels.py`): one set of output files per input. One concept per module:

- `atomic_writes`: every file is written atomically (a hidden temporary file in the same folder, flushed to disk,
  then a rename), so an interrupted run, or a power loss, leaves whole files or none; an input whose last file
  exists is done, and a re-run skips it (a label map that cannot be read all the same is redone: `is_whole_image`).
  `resumable_run`: on Ctrl-C a job says that the same command continues it (`run_resumable`).
- `input_records`: each output's record names the input it was made from, by content (`content_fingerprint`): a
  re-run skips an output only if this run's input of that name is the same, and refuses one made from another
  input (`check_recorded_inputs`), rather than reporting another input's result as this one's; a damaged record is
  read as none (`read_input_record`), so that it is refused or redone as such rather than stopping every run. A
  record written before its outputs may list them (``"outputs"``, `recorded_outputs`): what a later run may delete
  as that run's.
- `work_sharing`: process ``rank`` of ``world_size`` takes inputs ``rank, rank + world_size, ...``
  (`process_share`); the inputs of a batch are run in groups of one size (`group_by_size`).
- `run_settings`: `check_run_settings` records the settings that change the outputs in ``.state/settings.json``
  (`state_folder`: the job's hidden state folder): a re-run with other settings is refused (`SettingsChanged`)
  rather than mixing two kinds of outputs in one folder. A model given as a local folder is recorded by its
  resolved path (`comparable_path`: the same folder however given) and by its weights and config.json
  (`weights_sha256`), so that another model saved at the same path is another setting; a Hub id by those of the
  revision it resolves to (`model_folder`: its snapshot in the Hub cache), so that a repository moved to other
  weights is one too; so is its image processor (`image_processor_setting`). With --overwrite_output_dir the run
  starts over instead (`check_run_settings_or_start_over`): the writer removes what the earlier run wrote, by its
  records.
- `unfinished_folders`: while a run rewrites a folder whose finished outputs are read as a whole (a dataset's
  metadata), the folder is marked unfinished (`mark_unfinished`, until `mark_finished`) and those outputs are
  removed first, so that an interrupted run leaves no folder that reads as the earlier result with some of the new
  files in it; readers refuse a marked folder (`check_finished`).
- `skipped_inputs`: each process lists the inputs it could not read in ``.state/skipped-<rank>.json``
  (`write_skipped`); the main process merges this run's (`read_skipped`) once every process is done.
- `link_safety`: a job writes no links: one among its outputs was planted there, and writing or deleting through
  it would change another folder's files, so `check_no_links` refuses it before anything is written, and the
  removal helpers (`remove_file`, `remove_temporary_files`) never follow one.

The scripts import these names from here; the messages' wording (`some_of`, `folder_contents`) is
`weclip_hf.wording`'s.
"""

from .atomic_writes import (
    copy_file,
    is_whole_image,
    save_bytes,
    save_image,
    save_json,
    save_overlay,
    write_atomic,
)
from .input_records import (
    OUTPUTS,
    check_recorded_inputs,
    content_fingerprint,
    read_input_record,
    read_record,
    recorded_outputs,
    sha256_of,
)
from .link_safety import check_no_links, remove_file, remove_temporary_files, walk_entries
from .resumable_run import run_resumable
from .run_settings import (
    SETTINGS,
    WRITER,
    SettingsChanged,
    check_run_settings,
    check_run_settings_or_start_over,
    comparable_path,
    image_processor_setting,
    weights_key,
    weights_sha256,
)
from .skipped_inputs import read_skipped, write_skipped
from .state_folder import STATE_DIR
from .unfinished_folders import check_finished, mark_finished, mark_unfinished
from .work_sharing import decoding_workers, group_by_size, process_share, wants_overlay

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
    "comparable_path",
    "content_fingerprint",
    "copy_file",
    "decoding_workers",
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
    "walk_entries",
    "wants_overlay",
    "weights_key",
    "weights_sha256",
    "write_atomic",
    "write_skipped",
]
