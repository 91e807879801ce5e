"""Shared test setup: offline Hub, tiny random WeCLIP configs, a tiny CLIP and helpers to run examples/train.py."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import torch
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import filter_repo_objects
from hypothesis import settings

# the tiny configs, in a module that the benchmark imports too (re-exported: the tests import them from here)
from tiny_configs import (  # noqa: F401
    TINY_DINO,
    TINY_TEXT,
    TINY_VISION,
    make_tiny_config,
    make_tiny_plus_config,
)

from weclip_hf.local_cores import cores_per_local_process

# The README test command (and so CI) draws the same hypothesis examples on every run, so `main` cannot turn
# red on a lucky draw; `HYPOTHESIS_PROFILE=explore pytest tests/test_reliability.py` draws fresh ones.
settings.register_profile("default", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_configure(config) -> None:
    """A pytest-xdist worker runs torch on its share of the cores: with torch's default (every core) in each
    worker, ``-n 2`` on 2 cores ran 4 threads on 2 (the whole suite took 542 s instead of 363 s here)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        torch.set_num_threads(cores_per_local_process(workers))


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Every test starts with the process's torch thread count: the count changes float rounding (CPU bilinear
    resizing differs by 1 ulp between 1 and 2 threads), so a test that sets it (an example script run in this process
    with --num_threads, as tests/test_toy.py's) must not change the figures of the tests after it, whichever worker
    runs them (pytest-xdist; tests/test_remote_code.py compared a fresh process's pixels with this one's)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TRAIN = ROOT / "examples" / "train.py"
# examples/train.py run inside the test process leaves the process's allocator alone: by default the script keeps
# freed host memory for reuse (`weclip_hf.host_memory`, glibc settings for the whole process), which would change the
# allocator of every later test in this worker
IN_PROCESS = ["--release_host_memory"]

FAST = [
    "--toy_train_images",
    "24",
    "--toy_val_images",
    "4",
    "--per_device_train_batch_size",
    "4",
    "--num_overlays",
    "1",
    "--logging_steps",
    "1",
    "--no_msf",
]
FAST_ON_DATA = FAST[4:]  # FAST without the toy world's sizes, which a dataset flag refuses


@pytest.fixture
def tiny_config():
    return make_tiny_config()


@pytest.fixture
def tiny_model(tiny_config):
    from weclip_hf import WeCLIPForSemanticSegmentation

    torch.manual_seed(0)
    return WeCLIPForSemanticSegmentation(tiny_config).eval()


def with_varied_decoder(model: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """``model`` with its decoder's weight matrices redrawn normal(0, ``std``), so that its predictions vary across
    an image: a freshly drawn tiny decoder's logits vary by ~5e-4 (argmax margins ~1e-3) and it predicts one class
    over most images (a comparison of two routes' labels then compares constant maps); with std 0.3 its tiny WeCLIP
    and WeCLIP+ predict 3-5 classes in a 64 px noise image, margins ~5."""
    with torch.no_grad():
        for weight in (p for p in model.decoder.parameters() if p.ndim > 1):
            weight.normal_(0, std)
    return model


@pytest.fixture
def varied_tiny_model(tiny_model):
    """`tiny_model` whose labels vary across an image (`with_varied_decoder`), for tests that compare predictions."""
    return with_varied_decoder(tiny_model)


STRICT_ENV = "WECLIP_STRICT_TEST_DATA"


class CharTokenizer:
    """A stand-in for a CLIP tokenizer (one id per character, begin 0, end ``eos_token_id`` (2 unless given),
    padding 1) for text embeddings of a tiny random CLIP text tower."""

    def __init__(self, eos_token_id: int = 2):
        self.eos_token_id = eos_token_id

    def __call__(self, prompts, padding=False, truncation=False, return_tensors=None, max_length=None):
        end = self.eos_token_id
        tokens = [[0, *(3 + (ord(ch) % 90) for ch in p), end] for p in prompts]
        if not truncation:  # as transformers' tokenizers: lists of ids at their length
            return {"input_ids": tokens}
        ids = torch.ones(len(prompts), max_length, dtype=torch.long)
        for i, toks in enumerate(tokens):
            kept = [*toks[: max_length - 1], end] if len(toks) > max_length else toks
            ids[i, : len(kept)] = torch.tensor(kept)
        return {"input_ids": ids, "attention_mask": (ids != 1).long()}


class RecordingHub:
    """``HfApi.create_repo`` and ``HfApi.upload_folder`` replaced (the `fake_hub` fixture): every call is recorded in
    ``created`` / ``uploaded`` as its keywords (``repo_id`` too) and its HfApi's ``token``. A repository named without
    a user is the user "me"'s, as the Hub answers. An upload also records the files of its folder that its allow and
    ignore patterns select (``files``, as the Hub client selects them) and the others (``left_out``), and copies the
    selected ones to ``copy`` (a folder under ``copies``: a temporary folder is gone once the call returns); it
    answers ``https://hub/<repo_id>``, or a finished future with ``run_as_future``. `fail` makes a method raise."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, copies: Path) -> None:
        self.copies = copies
        self.created: list[dict] = []
        self.uploaded: list[dict] = []
        self.errors: dict[str, BaseException] = {}
        monkeypatch.setattr(HfApi, "create_repo", lambda api, repo_id, **kw: self._create(api, repo_id, **kw))
        monkeypatch.setattr(HfApi, "upload_folder", lambda api, **kw: self._upload(api, **kw))

    def fail(self, method: str, error: BaseException | int | None) -> None:
        """Make ``method`` ("create_repo" or "upload_folder") raise ``error`` from now on (after recording the
        call); an int is the HTTP status of an `HfHubHTTPError`; None: answer again."""
        if error is None:
            self.errors.pop(method, None)
            return
        if isinstance(error, int):
            response = requests.Response()
            response.status_code = error
            error = HfHubHTTPError(str(error), response=response)
        self.errors[method] = error

    def _create(self, api: HfApi, repo_id: str, **kwargs) -> SimpleNamespace:
        """``HfApi.create_repo``: the call recorded; the repository (its full id), or the error `fail` set."""
        self.created.append({"repo_id": repo_id, "token": api.token, **kwargs})
        if "create_repo" in self.errors:
            raise self.errors["create_repo"]
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"me/{repo_id}")

    def _upload(self, api: HfApi, *, folder_path: str, **kwargs) -> str | Future:
        """``HfApi.upload_folder``: the call and its files recorded, the files copied; the commit's address (a
        future of it with ``run_as_future``), or the error `fail` set."""
        folder, copy = Path(folder_path), self.copies / str(len(self.uploaded))
        found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        patterns = {k: kwargs.get(k) for k in ("allow_patterns", "ignore_patterns")}
        files = list(filter_repo_objects(found, **patterns))
        call = dict(kwargs, folder_path=folder_path, token=api.token, copy=copy, files=files)
        self.uploaded.append(call | {"left_out": [f for f in found if f not in files]})
        if "upload_folder" in self.errors:
            raise self.errors["upload_folder"]
        for name in files:
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(folder / name, copy / name)
        address = f"https://hub/{kwargs['repo_id']}"
        if not kwargs.get("run_as_future"):
            return address
        done = Future()
        done.set_result(address)
        return done


@pytest.fixture
def fake_hub(monkeypatch, tmp_path_factory) -> RecordingHub:
    """The Hub replaced by a `RecordingHub` for the test; uploads copied outside ``tmp_path`` (a run's folder)."""
    return RecordingHub(monkeypatch, tmp_path_factory.mktemp("uploaded"))


def require_data(path: Path, what: str) -> Path:
    """``path`` when it exists; else skip the test with the reason (shown in the summary with ``-rs``), or fail it
    when ``WECLIP_STRICT_TEST_DATA=1`` (CI sets it, so CI cannot go green on skipped data tests)."""
    if not path.exists():
        message = f"missing {what}: {path}"
        if os.environ.get(STRICT_ENV) == "1":
            pytest.fail(f"{message} ({STRICT_ENV}=1)")
        pytest.skip(message)
    return path


def tiny_text_config(tokenizer) -> dict:
    """A 2-layer CLIP text tower for ``tokenizer``: its vocabulary and its special-token ids (CLIP pools the
    text at the end-of-text id, which must be the tokenizer's)."""
    return dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIPModel saved like a Hub checkpoint, with the byte-level CLIPTokenizer the package ships
    (weclip_hf/toy_clip: any word tokenizes; no shared data needed)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from weclip_hf.data.toy import toy_clip_path

    tokenizer = CLIPTokenizer.from_pretrained(toy_clip_path(), model_max_length=77)
    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=96,
        patch_size=12,
    )
    text = tiny_text_config(tokenizer)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tinyclip")
    CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=16)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def release_fifo_later(fifo: Path, seconds: float = 2) -> None:
    """In ``seconds``, open FIFO ``fifo`` for writing and close it, so that a reader blocked on it (code under test
    that waits on a FIFO instead of refusing it) reads an empty file and the test ends, failing."""

    def release() -> None:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # no reader waits on it (ENXIO): nothing to release
            pass

    timer = threading.Timer(seconds, release)
    timer.daemon = True
    timer.start()


def train_env(threads: int = 2) -> dict[str, str]:
    """Environment of an examples/train.py subprocess: offline, ``threads`` CPU threads."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}


def free_port() -> int:
    """A TCP port free on this machine now (for a process group of a test run beside others: pytest-xdist)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(processes: int = 2) -> list[str]:
    """The torchrun command line of ``processes`` local processes, its rendezvous on a free port (``--standalone``:
    another test's process group may be running beside it)."""
    return [
        os.path.join(os.path.dirname(sys.executable), "torchrun"),
        "--standalone",
        "--nproc_per_node",
        str(processes),
    ]


def train_command(*args, threads: int = 2, launcher: tuple[str, ...] = (sys.executable,)) -> list[str]:
    """Command line of examples/train.py with ``args`` on ``threads`` CPU threads per process."""
    return [*launcher, str(TRAIN), *map(str, args), "--num_threads", str(threads)]


def run_train(*args, check=True, timeout=300, threads=2):
    """Run examples/train.py with ``args`` on ``threads`` CPU threads; fails the test if it fails."""
    proc = subprocess.run(
        train_command(*args, threads=threads),
        capture_output=True,
        text=True,
        env=train_env(threads),
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


EXAMPLES = ROOT / "examples"


def example_module(name: str):
    """examples/<name>.py (or a module of examples/benchmarking: ``"benchmarking.instruments"``) imported as the
    module ``name``, once per process, with examples/ on sys.path only while it is imported (sys.path is then
    restored, also of what the script itself inserts), so that no test finds a script by a plain ``import`` of
    another name later (examples/evaluate.py would shadow Hugging Face's ``evaluate``: `evaluate_module`)."""
    import importlib

    if name.split(".")[0] == "evaluate":
        raise ValueError("examples/evaluate.py is `evaluate_module()`: `evaluate` is Hugging Face's library")
    loaded = sys.modules.get(name)
    if loaded is not None:
        if not Path(getattr(loaded, "__file__", None) or "").is_relative_to(EXAMPLES):
            raise ImportError(f"sys.modules[{name!r}] is not examples/'s: {loaded!r}")
        return loaded
    saved = sys.path[:]
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved


def train_module():
    """examples/train.py imported as the module ``train`` (`example_module`)."""
    return example_module("train")


def train_phase(name: str):
    """The module ``name`` of examples/training/, one phase of examples/train.py (`example_module`): where the script
    looks up the names a test calls or patches."""
    return example_module(f"training.{name}")


def trainer_phase(name: str):
    """The module ``name`` of examples/trainer_run/, one concept of examples/train_with_trainer.py
    (`example_module`): where the script looks up the names a test calls or patches."""
    return example_module(f"trainer_run.{name}")


def segment_part(name: str):
    """The module ``name`` of examples/segmenting/, one concept of examples/segment.py (`example_module`): where the
    script looks up the names a test calls or patches."""
    return example_module(f"segmenting.{name}")


def labelling_part(name: str):
    """The module ``name`` of examples/pseudo_labelling/, one concept of examples/generate_pseudo_labels.py
    (`example_module`): where the script looks up the names a test calls or patches."""
    return example_module(f"pseudo_labelling.{name}")


def evaluate_module():
    """examples/evaluate.py imported as a fresh module (not named ``evaluate``: that is the Hugging Face library)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("weclip_evaluate_script", EXAMPLES / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_in_process(*args, threads: int | None = 1) -> dict:
    """``main`` of examples/train.py with ``args`` in this process (no interpreter start-up) on ``threads`` CPU
    threads (None: the script's own choice), restored afterwards; returns the run's metrics. For runs that need no
    signal or other process."""
    train = train_module()
    before = torch.get_num_threads()
    chosen = [] if threads is None else ["--num_threads", str(threads)]
    try:
        return train.main([*map(str, args), *chosen, *IN_PROCESS])
    finally:
        torch.set_num_threads(before)


def train_stopped_at(step: int, *args, monkeypatch) -> dict:
    """`train_in_process` stopped as by Ctrl-C once ``step`` is done (train.py's SIGINT handler saves ``step_N``
    and returns ``{"stopped_at": step, ...}``): an interrupted run to resume."""
    train = train_module()
    real_log_losses = train.log_losses

    def ctrl_c_after(accelerator, out, current, *rest):
        if current == step:
            os.kill(os.getpid(), signal.SIGINT)  # train.py's handler: stop after this step
        return real_log_losses(accelerator, out, current, *rest)

    with monkeypatch.context() as patch:
        patch.setattr(train, "log_losses", ctrl_c_after)
        return train_in_process(*args)


def resumable_args(clip: str) -> list:
    """A run of 6 steps over 16 toy images in batches of 4 (two epochs), a checkpoint every step, the RFM from
    step 4 on: what `reference_run` trained."""
    steps = ["--max_train_steps", 6, "--checkpointing_steps", 1, "--rfm_start_step", 3]
    return ["--clip_model_name_or_path", clip, *steps, *FAST, "--toy_train_images", 16]


def resolved_known_and_built(*args) -> tuple[dict, dict]:
    """train.py's values in effect of the command line ``args`` as a resume compares them: those the arguments fix,
    before the data and model load (`resolved_before_loading`), and all, once its model is built
    (`resolved_trajectory`, without a dataset's names; 8 training images)."""
    from weclip_hf.trajectory import resolved_trajectory

    train = train_module()
    parsed = train.parse_args([str(arg) for arg in args])
    model = train_phase("data_and_model").build_model(parsed, {})
    clip = None if parsed.model_name_or_path else train.clip_source(parsed)
    return train.resolved_before_loading(parsed), resolved_trajectory(parsed, model, clip, 8)


@pytest.fixture(scope="session")
def reference_run(tiny_clip, tmp_path_factory) -> Path:
    """The output folder of one uninterrupted `resumable_args` run (a subprocess on one thread), which the
    resume, interruption and data-loader worker tests must repeat bit for bit. Read only."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run_train(*resumable_args(tiny_clip), "--output_dir", out, threads=1)
    return out


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def toy_weclip_dir(tiny_clip, tmp_path_factory):
    """A WeCLIP of the toy preset's classes on the tiny CLIP saved with its image processor (long side 96, the tiny
    CLIP's 12 px patches): the folder a toy training run leaves, without the training (nor, as an earlier version's
    folder, the CLIP's tokenizer). Its decoder's weight
    matrices are drawn with std 0.3 (`with_varied_decoder`), so that its predictions vary across an image (3-8
    classes in a toy image; a freshly initialized decoder predicts one class everywhere)."""
    from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPImageProcessor
    from weclip_hf.presets import preset_config_kwargs

    torch.manual_seed(0)
    model = with_varied_decoder(
        WeCLIPForSemanticSegmentation.from_clip(tiny_clip, **preset_config_kwargs("toy"))
    )
    path = tmp_path_factory.mktemp("toy_weclip")
    model.save_pretrained(path)
    WeCLIPImageProcessor(size={"longest_edge": 96}, patch_size=12).save_pretrained(path)
    return path


def assert_holds_the_tokenizer_of_its_text_embeddings(folder: Path) -> None:
    """The model of ``folder`` gets new classes from the folder alone: AutoTokenizer loads the tokenizer saved there,
    which encodes the model's classes as its stored text embeddings do, and gives the model other classes (two of
    its own, swapped: their stored embeddings swapped)."""
    from transformers import AutoModelForSemanticSegmentation, AutoTokenizer

    import weclip_hf  # noqa: F401  (registers the Auto classes)

    model = AutoModelForSemanticSegmentation.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    stored = (model.class_text_embeds.clone(), model.background_text_embeds.clone())
    model.update_class_embeddings(tokenizer)
    torch.testing.assert_close((model.class_text_embeds, model.background_text_embeds), stored)
    # two of its classes, swapped: a model of two classes whose embeddings are the stored ones of those names
    first, second = model.config.class_names[:2]
    model.update_class_embeddings(tokenizer, class_names=[second, first])
    assert model.config.id2label == {0: "background", 1: second, 2: first}
    torch.testing.assert_close(model.class_text_embeds, stored[0][[1, 0]])


def save_another_model_at(folder: Path) -> None:
    """Save over the weights in ``folder`` others of the same names and shapes (each float tensor moved by 0.01),
    as a retrained model saved at the same path."""
    from safetensors.torch import load_file, save_file

    path = Path(folder) / "model.safetensors"
    tensors = {k: v + 0.01 if v.is_floating_point() else v for k, v in load_file(path).items()}
    save_file(tensors, path, metadata={"format": "pt"})


def interrupted_after(function, calls: int, called: list | None = None):
    """``function`` that raises KeyboardInterrupt (a Ctrl-C, a kill) when called once ``calls`` calls have run;
    ``called`` collects the positional arguments of each call that ran."""
    called = [] if called is None else called

    def interrupted(*args, **kwargs):
        if len(called) == calls:
            raise KeyboardInterrupt
        called.append(args)
        return function(*args, **kwargs)

    return interrupted


class OnAGPUMachine:
    """accelerate's `PartialState` of a process as on a GPU machine: its device ``cuda:0``, all else the real
    state's (a script's run on a CPU machine that shows which device --device chose over accelerate's)."""

    device = torch.device("cuda:0")

    def __init__(self, state):
        self._state = state

    def __getattr__(self, name: str):
        return getattr(self._state, name)


def loading_on_a_gpu_machine(script, monkeypatch) -> list:
    """Run ``script`` (segment.py, generate_pseudo_labels.py) as on a GPU machine (`OnAGPUMachine`): the list
    returned collects the device of each `load_model` call."""
    devices = []
    state_of, load_model = script.process_state, script.load_model

    def recording(args, state, device):
        devices.append(device)
        return load_model(args, state, device)

    monkeypatch.setattr(script, "process_state", lambda device: OnAGPUMachine(state_of(device)))
    monkeypatch.setattr(script, "load_model", recording)
    return devices
