"""A saved folder carries its code, as custom models on the Hub do: where weclip_hf cannot be imported, the Auto
classes and the pipeline load it with ``trust_remote_code=True`` and give the package's logits; where it is
imported, they use the package's classes without ``trust_remote_code``."""

import ast
import builtins
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_tiny_config, with_varied_decoder
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline
from transformers.dynamic_module_utils import get_imports, get_relative_imports

from weclip_hf import WeCLIPConfig, WeCLIPForSemanticSegmentation, WeCLIPImageProcessor
from weclip_hf.hub import publishable_files

# hub.py: `push_to_hub` imports it lazily, so the remote copy must have it too, with model_card.py (its default
# card); clip_features.py and model_loading.py: the frozen CLIP tower the model runs and the checks its
# from_pretrained makes; image_reading.py: how the processor reads its inputs; par_kernels.py: PAR's Triton kernels,
# which par_triton.py imports on first use (without them a GPU runs the eager PAR, 4-10x slower)
CODE_FILES = {
    "configuration_weclip.py",
    "modeling_weclip.py",
    "clip_features.py",
    "model_loading.py",
    "image_processing_weclip.py",
    "image_reading.py",
    "hub.py",
    "model_card.py",
    "par_kernels.py",
}

# Run in a fresh interpreter: weclip_hf is made unimportable before anything else is imported.
REMOTE_SCRIPT = '''
import builtins
import importlib
import sys


class NoWeclipHf:
    """A meta path finder that refuses weclip_hf and its submodules, as where the package is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "weclip_hf" or name.startswith("weclip_hf."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoWeclipHf())
prompts = []
builtins.input = lambda *args: prompts.append(args) or "n"  # transformers asks here whether to trust code
try:
    import weclip_hf  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("weclip_hf is importable: the finder did not block it")

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline

folder, image_path, out_path = sys.argv[1:4]
try:
    AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=False)
    refused = ""
except ValueError as err:
    refused = str(err)
model = AutoModelForSemanticSegmentation.from_pretrained(folder, trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
segmenter = pipeline("image-segmentation", model=folder, trust_remote_code=True)
image = Image.open(image_path)
pixel_values = processor(image, return_tensors="pt")["pixel_values"]
pipeline_pixel_values = segmenter.image_processor(image, return_tensors="pt")["pixel_values"]
with torch.no_grad():
    logits = model(pixel_values).logits
    pipeline_logits = segmenter.model(pipeline_pixel_values).logits
segments = segmenter(image)
code_package = type(model).__module__.rpartition(".")[0]
importlib.import_module(code_package + ".hub")  # what push_to_hub imports lazily
torch.save(
    {
        "classes": [type(obj).__module__ for obj in (model, model.config, processor, segmenter.model)],
        "refused": refused,
        "prompts": len(prompts),
        "pixel_values": pixel_values,
        "logits": logits,
        "pipeline_logits": pipeline_logits,
        "masks": {s["label"]: torch.from_numpy(np.array(s["mask"])) for s in segments},
        "weclip_modules": sorted(m for m in sys.modules if m.split(".")[0] == "weclip_hf"),
    },
    out_path,
)
'''


def relative_imports(file) -> set[str]:
    """The package's modules that ``file`` imports anywhere in it, in every form (``from .a import b``, ``from . import
    a``): transformers ships only those its own pattern finds (``get_relative_imports``)."""
    names = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names |= {node.module} if node.module else {alias.name for alias in node.names}
    return names


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny random WeCLIP whose labels vary across an image (`with_varied_decoder`) and its processor saved with
    save_pretrained, and a fixed RGB test image."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weclip")
    model = with_varied_decoder(WeCLIPForSemanticSegmentation(make_tiny_config())).eval()
    model.save_pretrained(path / "model")
    WeCLIPImageProcessor(patch_size=8).save_pretrained(path / "model")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(path / "image.png")
    return path / "model", path / "image.png"


def test_saved_folder_has_auto_map_and_code(saved):
    folder, _ = saved
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_weclip.WeCLIPConfig",
        "AutoModelForSemanticSegmentation": "modeling_weclip.WeCLIPForSemanticSegmentation",
    }
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor["auto_map"] == {"AutoImageProcessor": "image_processing_weclip.WeCLIPImageProcessor"}
    code = {p.name for p in folder.glob("*.py")}
    assert CODE_FILES <= code
    assert "__init__.py" not in code
    for name in sorted(code):
        # every relative import is shipped, every absolute one is a third-party package or the standard library
        assert {f"{m}.py" for m in get_relative_imports(folder / name)} <= code, name
        assert {f"{m}.py" for m in relative_imports(folder / name)} <= code, name
        for module in get_imports(folder / name):
            assert module != "weclip_hf" and importlib.util.find_spec(module) is not None, (name, module)
    assert CODE_FILES <= set(publishable_files(folder))


def test_remote_code_loads_without_the_package(saved, tmp_path):
    """Auto classes and the pipeline, in a fresh process where ``import weclip_hf`` fails, match the package."""
    folder, image_path = saved
    script, out = tmp_path / "load_remote.py", tmp_path / "remote.pt"
    script.write_text(REMOTE_SCRIPT)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf_home"),
        HF_MODULES_CACHE=str(tmp_path / "hf_modules"),
        TRANSFORMERS_VERBOSITY="error",
        # the fresh process resizes with this one's torch threads (1 ulp of bilinear resizing depends on them)
        OMP_NUM_THREADS=str(torch.get_num_threads()),
    )
    run = subprocess.run(
        [sys.executable, str(script), str(folder), str(image_path), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    remote = torch.load(out)
    assert remote["weclip_modules"] == []
    assert all(m.startswith("transformers_modules.") for m in remote["classes"]), remote["classes"]
    assert "contains custom code" in remote["refused"]
    assert remote["prompts"] == 0

    model = WeCLIPForSemanticSegmentation.from_pretrained(folder)
    processor = WeCLIPImageProcessor.from_pretrained(folder)
    image = Image.open(image_path)
    pixel_values = processor(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values).logits
    torch.testing.assert_close(remote["pixel_values"], pixel_values, rtol=0, atol=0)
    torch.testing.assert_close(remote["logits"], logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(remote["pipeline_logits"], logits, rtol=0, atol=1e-6)
    segments = pipeline("image-segmentation", model=str(folder))(image)
    masks = {s["label"]: torch.from_numpy(np.array(s["mask"])) for s in segments}
    assert len(masks) > 1  # one mask over the whole image would match any route's
    assert masks.keys() == remote["masks"].keys()
    for label, mask in masks.items():
        assert torch.equal(remote["masks"][label], mask), label


def test_package_classes_without_trust_remote_code(saved, monkeypatch):
    """With weclip_hf imported, the folder's auto_map is not used: no prompt, no remote code, no error."""
    folder, _ = saved

    prompts = []  # transformers asks on stdin whether to trust the code (and swallows errors raised here)
    monkeypatch.setattr(builtins, "input", lambda *args: prompts.append(args) or "n")
    assert type(AutoConfig.from_pretrained(folder)) is WeCLIPConfig
    assert type(AutoModelForSemanticSegmentation.from_pretrained(folder)) is WeCLIPForSemanticSegmentation
    assert type(AutoImageProcessor.from_pretrained(folder)) is WeCLIPImageProcessor
    segmenter = pipeline("image-segmentation", model=str(folder))
    assert type(segmenter.model) is WeCLIPForSemanticSegmentation
    assert type(segmenter.image_processor) is WeCLIPImageProcessor
    assert prompts == []
