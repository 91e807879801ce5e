"""The base install (no ``train`` extra) serves the model, its processor and the pipeline: ``datasets`` and
``evaluate`` (pyproject.toml's ``train`` extra) are needed only by training, evaluation and the toy world."""

import subprocess
import sys

import numpy as np
import torch
from conftest import ROOT, make_tiny_config
from PIL import Image

from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPImageProcessor

TRAIN_EXTRA = ("datasets", "evaluate")

# Run in a fresh interpreter where the train extra's packages cannot be imported.
BASE_INSTALL_SCRIPT = """
import sys


class NoTrainExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {extra}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NoTrainExtra())
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

import weclip_hf  # noqa: F401  (registers the Auto classes and the pipeline)

folder, image_path, out_path = sys.argv[1:4]
model = AutoModelForSemanticSegmentation.from_pretrained(folder).eval()
processor = AutoImageProcessor.from_pretrained(folder)
image = Image.open(image_path)
inputs = processor(image)
with torch.no_grad():
    labels = processor.post_process_semantic_segmentation(model(**inputs), target_sizes=[image.size[::-1]])[0]
segments = pipeline("image-segmentation", model=folder)(image)
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({extra}))
torch.save({{"labels": labels, "num_segments": len(segments), "loaded": loaded}}, out_path)
""".format(extra=repr(TRAIN_EXTRA))


def test_model_processor_and_pipeline_need_no_train_extra(tmp_path):
    torch.manual_seed(0)
    model = WeCLIPForSemanticSegmentation(make_tiny_config()).eval()
    processor = WeCLIPImageProcessor(patch_size=8)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 40, 3), dtype=np.uint8))
    image.save(tmp_path / "image.png")
    script = tmp_path / "base_install.py"
    script.write_text(BASE_INSTALL_SCRIPT)
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "model"),
            str(tmp_path / "image.png"),
            str(tmp_path / "out.pt"),
        ],
        capture_output=True,
        text=True,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},  # the tree under test
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = torch.load(tmp_path / "out.pt")
    assert out["loaded"] == []
    with torch.no_grad():
        expected = processor.post_process_semantic_segmentation(
            model(**processor(image)), target_sizes=[image.size[::-1]]
        )[0]
    assert torch.equal(out["labels"], expected)
    assert out["num_segments"] == len(expected.unique())
