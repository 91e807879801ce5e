"""Argument parsing shared by the example scripts: argparse types that refuse bad values at parse time, the flags
several scripts share under the same words and help texts, and the checks that refuse at parsing what the run would
fail on later (after loading its model or its data), naming the flag. One concept per module:

- `value_types`: argparse types of counts (`at_least_one`, `non_negative`), a positive number (`positive_float`)
  and a fraction (`fraction`), each refusing another value with what it expected.
- `config_overrides`: --config_overrides ('field=value,...') read as keyword arguments of a WeCLIP config
  (`parse_config_overrides`), a misspelt field refused with the closest of its fields (`config_fields`).
- `devices`: --device (`add_device_flag`, `add_process_device_flag`), refused at parsing where torch has no such
  device here (`device_name`, `device_count`) or where the launch contradicts it (`check_device_fits_launch`);
  accelerate's state and device of each process (`process_state`, `process_device`).
- `data_sources`: the dataset's flags and their help texts: the mutually exclusive data sources
  (`add_data_source_flags`, `check_one_data_source`), the toy world's sizes (`add_toy_size_flags`), and the flags
  the data source named leaves unread refused (`check_source_flags`).
- `inference_flags`: multi-scale + flip (`add_multiscale_flags`; its scales once the model is loaded:
  `scales_in_effect`), the CRF's parameters (`add_crf_parameter_flags`, `resolve_crf_flags`), the weight dtypes;
  a step's flag without its switch refused (`check_switched_flags`).
- `model_flags`: the saved model of --model_name_or_path checked at parsing (`check_model_argument`,
  `check_saved_model_flag`) and its config read once (`saved_config`); the backbones of a fresh model
  (`check_backbone_flags`).
- `preset_flags`: a --preset that does not fit the data or the model refused (`check_preset_fits_data`,
  `check_preset_fits_model`), and the preset whose recipe a run follows (`recipe_name`, `model_type_of_args`,
  `saved_training_preset`).
- `help_texts`: what --help shows that is computed: a script's description (`first_paragraph`) and each preset's
  value of a recipe or config field (`recipe_values`, `config_values`).
- `output_flags`: where a run's results go, checked at parsing: an output path that is an existing file
  (`check_output_path`), a --hub_token holding whitespace (`check_hub_token`).

The scripts import these names from here.
"""

from .config_overrides import CONFIG_OVERRIDES_HELP, parse_config_overrides
from .data_sources import (
    CLASS_NAMES_HELP,
    DATA_SOURCE_HELP,
    DATASET_CONFIG_HELP,
    IMAGE_COLUMN_HELP,
    LABELS_COLUMN_HELP,
    MASK_COLUMN_HELP,
    TRAIN_VAL_SPLIT_HELP,
    add_data_source_flags,
    add_toy_size_flags,
    check_one_data_source,
    check_source_flags,
)
from .devices import (
    PROCESS_DEVICE_HELP,
    add_device_flag,
    add_process_device_flag,
    check_device_fits_launch,
    device_name,
    process_device,
    process_state,
)
from .help_texts import config_values, first_paragraph, recipe_values
from .inference_flags import (
    CRF_PARAMETER_FLAGS,
    MODEL_SCALES_HELP,
    WEIGHT_DTYPES,
    add_crf_parameter_flags,
    add_multiscale_flags,
    check_switched_flags,
    crf_overrides,
    one_flag_note,
    resolve_crf_flags,
    scales_in_effect,
)
from .model_flags import (
    check_backbone_flags,
    check_model_argument,
    check_saved_model_flag,
    naming_the_model_flag,
    saved_config,
)
from .output_flags import check_hub_token, check_output_path
from .preset_flags import (
    check_preset_fits_data,
    check_preset_fits_model,
    model_type_of_args,
    recipe_name,
    saved_training_preset,
)
from .value_types import at_least_one, fraction, non_negative, positive_float

__all__ = [
    "CLASS_NAMES_HELP",
    "CONFIG_OVERRIDES_HELP",
    "CRF_PARAMETER_FLAGS",
    "DATASET_CONFIG_HELP",
    "DATA_SOURCE_HELP",
    "IMAGE_COLUMN_HELP",
    "LABELS_COLUMN_HELP",
    "MASK_COLUMN_HELP",
    "MODEL_SCALES_HELP",
    "PROCESS_DEVICE_HELP",
    "TRAIN_VAL_SPLIT_HELP",
    "WEIGHT_DTYPES",
    "add_crf_parameter_flags",
    "add_data_source_flags",
    "add_device_flag",
    "add_multiscale_flags",
    "add_process_device_flag",
    "add_toy_size_flags",
    "at_least_one",
    "check_backbone_flags",
    "check_device_fits_launch",
    "check_hub_token",
    "check_model_argument",
    "check_one_data_source",
    "check_output_path",
    "check_preset_fits_data",
    "check_preset_fits_model",
    "check_saved_model_flag",
    "check_source_flags",
    "check_switched_flags",
    "config_values",
    "crf_overrides",
    "device_name",
    "first_paragraph",
    "fraction",
    "model_type_of_args",
    "naming_the_model_flag",
    "non_negative",
    "one_flag_note",
    "parse_config_overrides",
    "positive_float",
    "process_device",
    "process_state",
    "recipe_name",
    "recipe_values",
    "resolve_crf_flags",
    "saved_config",
    "saved_training_preset",
    "scales_in_effect",
]
