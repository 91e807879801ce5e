"""--device and the process a model runs in: the flag (`add_device_flag`, `add_process_device_flag`), its type
(`device_name`: a device that is here, `device_count`, `devices_here`), the check against the launch
(`launched_processes`, `check_device_fits_launch`) and accelerate's state and device of this process
(`process_state`, `process_device`)."""

from __future__ import annotations

import argparse

from ..wording import counted


def add_device_flag(parser) -> None:
    """``--device``: the torch device a benchmark runs its model on (default: cuda where available, else cpu)."""
    import torch

    parser.add_argument(
        "--device",
        type=device_name,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda where available, else cpu)",
    )


PROCESS_DEVICE_HELP = (
    "torch device of the model: cpu, cuda, cuda:N, mps, xpu (default: accelerate's: under `accelerate launch` each "
    "process's own GPU, else a GPU where there is one, else the CPU; the environment's ACCELERATE_USE_CPU=1, as "
    "`accelerate launch --cpu` sets it, the CPU). With several processes: cpu, or a device type without an index "
    "(each process takes its own; choose the GPUs with CUDA_VISIBLE_DEVICES)"
)


def add_process_device_flag(parser) -> None:
    """``--device`` of a script that runs its model in each process of a launch (segment.py,
    generate_pseudo_labels.py, evaluate.py): default None, accelerate's device (`process_device`)."""
    parser.add_argument("--device", type=device_name, help=PROCESS_DEVICE_HELP)


def device_count(device_type: str) -> int:
    """The devices of ``device_type`` that torch can use here (cpu: 1; a type without a torch module, as meta: 0)."""
    import torch

    if device_type == "cpu":
        return 1
    try:
        module = torch.get_device_module(device_type)
    except RuntimeError:
        return 0
    return module.device_count() if module.is_available() else 0


def device_name(text: str) -> str:
    """argparse type of --device: a torch device string whose device is here (`device_count`), else an error naming
    the devices there are."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        hint = " (a GPU is cuda)" if text.split(":")[0].lower() == "gpu" else ""
        raise argparse.ArgumentTypeError(
            f"{text!r} is no torch device{hint}: give cpu, cuda, cuda:N, mps or xpu."
        ) from None
    count = device_count(device.type)
    if count == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: torch finds no {device.type} device here (torch.{device.type}.is_available() is False: no "
            f"such device, or a torch built without {device.type} support); devices here: {', '.join(devices_here())}."
        )
    if device.index is not None and device.index >= count and device.type != "cpu":
        raise argparse.ArgumentTypeError(
            f"{text!r}: torch finds {counted(count, device.type + ' device')} here, "
            f"{device.type}:0..{device.type}:{count - 1}."
        )
    return text


def devices_here() -> list[str]:
    """The device types torch can use here, cpu first."""
    return ["cpu", *(kind for kind in ("cuda", "mps", "xpu") if device_count(kind))]


def launched_processes() -> int:
    """The processes of the launch this process belongs to, as accelerate counts them from the environment
    (`accelerate launch`, torchrun, MPI); 1 run alone."""
    from accelerate.utils import get_int_from_env

    return get_int_from_env(["PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "WORLD_SIZE"], 1)


def check_device_fits_launch(parser: argparse.ArgumentParser, device: str | None) -> None:
    """Refuse a --device the launch contradicts, before any model is loaded: another than the CPU with
    ACCELERATE_USE_CPU=1 (`accelerate launch --cpu`), and one device by its index (cuda:1) for several processes,
    which would all run on it (each process takes its own GPU, `process_device`)."""
    import torch
    from accelerate.utils import parse_flag_from_env

    if device is None:
        return
    chosen = torch.device(device)
    if chosen.type != "cpu" and parse_flag_from_env("ACCELERATE_USE_CPU"):
        parser.error(
            f"--device {device} asks for a {chosen.type} device, and ACCELERATE_USE_CPU=1 (`accelerate launch "
            "--cpu`) for the CPU: drop one of them."
        )
    processes = launched_processes()
    if chosen.type != "cpu" and chosen.index is not None and processes > 1:
        parser.error(
            f"--device {device} would put all {processes} processes of the launch on one device: give --device "
            f"{chosen.type} (each process takes its own, {chosen.type}:LOCAL_RANK) or leave it out; choose the "
            "GPUs with CUDA_VISIBLE_DEVICES."
        )


def process_state(device: str | None):
    """accelerate's `PartialState` of this process, on the CPU with ``--device cpu`` or ACCELERATE_USE_CPU=1."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=device == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU"))


def process_device(device: str | None, state):
    """The torch device this process runs its model on: accelerate's (``state.device``, the process's own GPU under
    a launch) without ``device`` (--device) or for its type without an index, else ``device`` itself."""
    import torch

    if device is None:
        return state.device
    chosen = torch.device(device)
    return state.device if chosen.index is None and chosen.type == state.device.type else chosen
