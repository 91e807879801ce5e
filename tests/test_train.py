"""examples/train.py end to end (subprocesses, tiny CLIP, CPU): toy default, Hub-schema datasets, exact
resume, signals, full supervision, push to the Hub (mocked)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "train.py"
FAST = ["--toy_train_images", "24", "--toy_val_images", "4", "--per_device_train_batch_size", "4",
        "--num_overlays", "1", "--logging_steps", "1", "--no_msf"]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny random CLIPModel with the real CLIP tokenizer, saved like a Hub checkpoint."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    tokenizer_dir = SHARED / "data" / "clip-tokenizer"
    if not tokenizer_dir.exists():
        pytest.skip("../shared/data/clip-tokenizer is absent")
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4, image_size=96,
                  patch_size=12)  # fmt: skip
    text = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=len(tokenizer), max_position_embeddings=77)  # fmt: skip
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tinyclip")
    CLIPModel(CLIPConfig(vision_config=vision, text_config=text, projection_dim=16)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def run_train(*args, check=True, timeout=300):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, str(TRAIN), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=timeout)  # fmt: skip
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def toy_run(tiny_clip, tmp_path_factory):
    """A shortened default run (toy world, 3 steps, with multi-scale evaluation)."""
    out = tmp_path_factory.mktemp("toy") / "run"
    run_train("--clip_model_name_or_path", tiny_clip, "--output_dir", out, "--max_train_steps", 3, *FAST[:-1])
    return out


def test_toy_default_writes_model_metrics_overlays_and_card(toy_run):
    out = toy_run
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("cam_miou", "pseudo_label_miou", "miou", "miou_msf", "baseline_bg_miou", "baseline_disk_miou"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["train_steps"] == 3
    overlay = Image.open(metrics["overlays"][0])
    assert overlay.size == (4 * 96, 96)
    card = (out / "README.md").read_text()
    assert "weclip" in card and "mean_iou" in card and "Zhang" in card and "limitations" in card
    import weclip_hf  # noqa: F401  (registers the Auto classes)
    from transformers import pipeline

    segmenter = pipeline("image-segmentation", model=str(out))
    results = segmenter(Image.fromarray(np.zeros((96, 96, 3), np.uint8)))
    assert results and results[0]["mask"].size == (96, 96)


def test_fully_supervised_flag(tmp_path, tiny_clip):
    out = tmp_path / "full"
    run_train("--clip_model_name_or_path", tiny_clip, "--output_dir", out, "--max_train_steps", 2, "--fully_supervised",
              *FAST)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert "fully_supervised_miou" in metrics and "miou" not in metrics


def test_resume_repeats_uninterrupted_run_exactly(tmp_path, tiny_clip):
    common = ["--clip_model_name_or_path", tiny_clip, "--max_train_steps", 6, "--checkpointing_steps", 3,
              "--rfm_start_step", 4, *FAST]  # fmt: skip
    run_train(*common, "--output_dir", tmp_path / "a")
    run_train(*common[:3], 3, *common[4:], "--output_dir", tmp_path / "b")  # stops after 3 steps
    (tmp_path / "b" / "model.safetensors").unlink()
    proc = run_train(*common, "--output_dir", tmp_path / "b", "--resume_from_checkpoint", "latest")
    assert "resumed from" in proc.stdout + proc.stderr
    log_a, log_b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["loss"] for r in log_a] == [r["loss"] for r in log_b]
    assert [r["rfm"] for r in log_a] == [False] * 4 + [True] * 2  # RFM from step 4 in both runs
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a) and int(b["training_step"]) == 6


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, tiny_clip):
    out = tmp_path / "sig"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(TRAIN), "--clip_model_name_or_path", tiny_clip, "--output_dir",
                             str(out), "--max_train_steps", "100000", *FAST], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "train_log.jsonl").exists():
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-2000:]
    checkpoints = [p for p in out.glob("step_*") if not p.name.endswith(".tmp")]
    assert checkpoints and "stopped by signal" in output
    assert not list(out.glob("*.tmp"))


def _write_mask_dataset(root: Path, with_masks: bool = True, multi_label: bool = False):
    """A DatasetDict in the Hub layout: image + mask column (VOC style) or image + multi-label column."""
    import datasets

    rng = np.random.default_rng(0)
    rows = {"image": [], "mask": [], "classes": []}
    for _ in range(12):
        image = rng.integers(0, 255, (80, 90, 3), dtype=np.uint8)
        mask = np.zeros((80, 90), np.uint8)
        c = int(rng.integers(1, 4))
        mask[20:60, 10:50] = c
        mask[0] = 255
        rows["image"].append(Image.fromarray(image))
        rows["mask"].append(Image.fromarray(mask))
        rows["classes"].append([float(i == c - 1) for i in range(3)])
    features = datasets.Features({"image": datasets.Image(), "mask": datasets.Image(),
                                  "classes": datasets.List(datasets.Value("float32"))})  # fmt: skip
    full = datasets.Dataset.from_dict(rows, features=features)
    train = full if with_masks else full.remove_columns("mask")
    datasets.DatasetDict({"train": train, "validation": full.select(range(4))}).save_to_disk(root)


@pytest.mark.parametrize("layout", ["mask_column", "multi_label_column"])
def test_local_hub_schema_datasets(tmp_path, tiny_clip, layout):
    data = tmp_path / "data"
    _write_mask_dataset(data, with_masks=layout == "mask_column")
    extra = ["--labels_column", "classes"] if layout == "multi_label_column" else []
    out = tmp_path / "out"
    run_train("--dataset_path", data, "--clip_model_name_or_path", tiny_clip, "--class_names", "a", "b", "c",
              "--background_names", "sky", "grass", "--output_dir", out, "--max_train_steps", 2,
              "--crop_size", 64, "--per_device_train_batch_size", 2, "--no_msf", "--num_overlays", 1, *extra)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_class_iou"]) == {"background", "a", "b", "c"}


def test_imagefolder_dataset(tmp_path, tiny_clip):
    root = tmp_path / "folder" / "train"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
            mask = np.zeros((64, 64), np.uint8)
            mask[10:40, 10:40] = 1 + i % 2
            Image.fromarray(mask).save(root / "masks" / f"{i}.png")
            f.write(json.dumps({"file_name": f"images/{i}.png", "label_file_name": f"masks/{i}.png"}) + "\n")
    out = tmp_path / "out"
    run_train("--data_dir", tmp_path / "folder", "--clip_model_name_or_path", tiny_clip, "--class_names", "a", "b",
              "--background_names", "sky", "--output_dir", out, "--max_train_steps", 2, "--crop_size", 48,
              "--per_device_train_batch_size", 2, "--validation_split", "none")  # fmt: skip
    assert (out / "model.safetensors").exists()


def test_bad_dataset_errors_name_the_problem(tmp_path, tiny_clip):
    data = tmp_path / "data"
    _write_mask_dataset(data)
    proc = run_train("--dataset_path", data, "--clip_model_name_or_path", tiny_clip, "--class_names", "a",
                     "--background_names", "sky", "--output_dir", tmp_path / "o", "--max_train_steps", 1,
                     "--crop_size", 64, check=False)  # fmt: skip
    assert proc.returncode != 0 and "Multi-hot labels of #0 have width 3, expected 1" in proc.stderr
    proc = run_train("--dataset_path", data, "--clip_model_name_or_path", tiny_clip, "--image_column", "photo",
                     "--output_dir", tmp_path / "o", "--max_train_steps", 1, check=False)  # fmt: skip
    assert proc.returncode != 0 and "available columns" in proc.stderr and "'image'" in proc.stderr


def test_push_to_hub_uploads_the_output_folder(tmp_path, tiny_clip, monkeypatch):
    sys.path.insert(0, str(TRAIN.parent))
    import train as train_script
    from huggingface_hub import HfApi

    calls = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, exist_ok: type("R", (), {"repo_id": "me/" + repo_id})())

    def upload_folder(self, repo_id, folder_path, commit_message, ignore_patterns):
        calls.update(repo_id=repo_id, files=sorted(os.listdir(folder_path)), ignore=ignore_patterns)

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    out = tmp_path / "push"
    train_script.main(["--clip_model_name_or_path", tiny_clip, "--output_dir", str(out), "--max_train_steps", "1",
                       "--push_to_hub", "--hub_model_id", "weclip-toy-test", *FAST])  # fmt: skip
    assert calls["repo_id"] == "me/weclip-toy-test"
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "README.md", "metrics.json"):
        assert name in calls["files"], name
    assert "step_*" in calls["ignore"]


def test_inference_notebook_runs_headless(toy_run, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("WECLIP_MODEL_DIR", str(toy_run))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    notebook = nbformat.read(ROOT / "examples" / "inference.ipynb", as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the masks were shown as a picture
    assert not any(o.get("output_type") == "error" for o in outputs)
