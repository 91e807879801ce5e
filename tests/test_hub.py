"""The model cards of the three publishing paths (the converter script, the training script and the model's
``push_to_hub``) come from one builder: same sections, same method text, the one citation."""

from __future__ import annotations

import re
import shutil
from argparse import Namespace
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import FAST, ROOT, RecordingHub, example_module, make_tiny_config, train_in_process

from weclip_hf.conversion import ConversionReport
from weclip_hf.model_card import METHODS, make_model_card

CITATION = METHODS["weclip"].citation
SHARED_SECTIONS = ["## Source", "## Results", "## Usage", "## Intended use and limitations", "## Citation"]


def _sections(card: str) -> list[str]:
    return [line for line in card.splitlines() if line.startswith("## ") and line != "## Training arguments"]


def _import_example(name: str):
    return example_module(name)


def test_the_citation_is_written_once_in_the_code():
    files = [*(ROOT / "weclip_hf").rglob("*.py"), *(ROOT / "examples").rglob("*.py")]
    holders = [p.relative_to(ROOT) for p in files if "@inproceedings{zhang2024frozen" in p.read_text()]
    assert holders == [Path("weclip_hf/model_card.py")]


def test_unknown_model_type_is_named():
    with pytest.raises(ValueError, match="model_type.*'weclip'.*'other'"):
        make_model_card(SimpleNamespace(model_type="other"), "m", "source")


@pytest.fixture(scope="module")
def converter_card() -> str:
    args = Namespace(
        checkpoint="ckpt/WeCLIP_model_iter_30000.pth",
        clip=None,
        tokenizer="openai/clip-vit-base-patch16",
        preset="voc",
        output_dir="out/weclip-voc",
        hub_model_id=None,
        class_names=None,
    )
    report = ConversionReport(mapped={"decoder.linear_pred.weight": ["decoder.classifier.weight"]})
    model = SimpleNamespace(config=make_tiny_config(), conversion_report=report)
    return _import_example("convert_official_checkpoint").build_model_card(args, model, "ab" * 32).content


@pytest.fixture(scope="module")
def push_card(tmp_path_factory) -> str:
    import torch

    from weclip_hf import WeCLIPForSemanticSegmentation

    torch.manual_seed(0)
    model = WeCLIPForSemanticSegmentation(make_tiny_config())
    with pytest.MonkeyPatch.context() as patch:
        hub = RecordingHub(patch, tmp_path_factory.mktemp("push"))
        model.push_to_hub("weclip-card", metrics={"miou": 0.5})
    return (hub.uploaded[0]["copy"] / "README.md").read_text()


@pytest.fixture(scope="module")
def training_card(tiny_clip, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("train") / "run"
    train_in_process(
        "--clip_model_name_or_path", tiny_clip, "--output_dir", out, "--max_train_steps", 1, *FAST
    )
    return (out / "README.md").read_text()


def test_converter_training_and_push_cards_come_from_one_builder(
    converter_card, push_card, training_card, tiny_clip
):
    cards = {"converter": converter_card, "push_to_hub": push_card, "train.py": training_card}
    for name, card in cards.items():
        assert _sections(card) == SHARED_SECTIONS, name
        assert card.count(CITATION) == 1, name
        assert len(re.findall(r"@\w+\{", card)) == 1, name  # no second citation
        assert METHODS["weclip"].paper in card and METHODS["weclip"].code in card, name
        assert "library_name: transformers" in card and "pipeline_tag: image-segmentation" in card, name
    assert "## Training arguments" in training_card and "## Training arguments" not in converter_card
    # the card describes the model, not the machine's run: no derived flags or local paths
    assert "`max_train_steps`: `1`" in training_card
    assert not any(f"`{k}`" in training_card for k in ("given_model_flags", "rfm_start_source", "output_dir"))
    assert "12 x 12 pixels a cell" in training_card  # the tiny CLIP's patches, not ViT-B/16's
    assert str(tiny_clip) not in training_card  # a local CLIP folder by its name (the path named the machine)
    assert f"`clip_model_name_or_path`: `{Path(tiny_clip).name} (a local folder)`" in training_card
    assert "| miou | 0.5000 |" in push_card


def test_converter_card_keeps_where_the_weights_came_from(converter_card):
    card = converter_card
    assert "`WeCLIP_model_iter_30000.pth` (sha256 `" + "ab" * 32 + "`)" in card
    assert "Preset: `voc` (PASCAL VOC 2012 train_aug, image-level labels)" in card
    assert "Labels: background, cat, dog, car, tree" in card  # the tiny config's labels
    assert "1 official tensors" in card  # the conversion report's summary
    assert "`openai/clip-vit-base-patch16`" in card and "prompt `" in card
    assert (
        "\n- voc\n" in card and "license:" not in card
    )  # the preset tag; the official weights' license is not ours


def _official_sized(config):
    """``config`` with the tower and projection sizes of the official checkpoints' CLIP (ViT-B/16), on its config
    only."""
    from weclip_hf.conversion.config_inference import (
        OFFICIAL_CLIP_PROJECTION_DIM,
        OFFICIAL_CLIP_TEXT,
        OFFICIAL_CLIP_VISION,
    )

    for tower, sizes in (
        (config.vision_config, OFFICIAL_CLIP_VISION),
        (config.text_config, OFFICIAL_CLIP_TEXT),
    ):
        for key, value in sizes.items():
            setattr(tower, key, value)
    config.projection_dim = OFFICIAL_CLIP_PROJECTION_DIM
    return config


def _converter_card_for(tmp_path: Path, **given) -> str:
    """The converter's card of a tiny WeCLIP whose CLIP has the official sizes, for arguments ``given`` (the
    others as the converter's defaults)."""
    args = Namespace(
        **{
            "checkpoint": "WeCLIP.pth",
            "clip": None,
            "tokenizer": None,
            "preset": "voc",
            "output_dir": str(tmp_path / "conv_ok"),
            "hub_model_id": None,
            "class_names": None,
            **given,
        }
    )
    model = SimpleNamespace(config=_official_sized(make_tiny_config()), conversion_report=ConversionReport())
    return _import_example("convert_official_checkpoint").build_model_card(args, model, "ab" * 32)


def test_a_converted_card_names_the_clip_given_with_clip(tmp_path):
    """--clip's CLIP is the base model (it named the official CLIP whatever CLIP was used); a local folder is left
    out of the metadata and the method sentence, as train.py's cards do, and named by its folder's name only."""
    official = _converter_card_for(tmp_path)
    assert official.data.base_model == "openai/clip-vit-base-patch16"  # no --clip: the checkpoint's own CLIP
    hub = _converter_card_for(tmp_path, clip="me/other-clip")
    assert hub.data.base_model == "me/other-clip" and "A frozen CLIP (me/other-clip) provides" in hub.content
    (tmp_path / "my-clip").mkdir()
    local = _converter_card_for(tmp_path, clip=str(tmp_path / "my-clip"), tokenizer=str(tmp_path / "my-clip"))
    assert local.data.base_model is None and "A frozen CLIP (a CLIP ViT) provides features" in local.content
    assert "openai/clip-vit-base-patch16" not in local.content and str(tmp_path) not in local.content
    assert "`my-clip (a local folder)` (transformers CLIP)" in local.content


def test_a_converted_card_loads_the_hub_id_or_the_folder_name_not_its_path(tmp_path):
    """The usage snippets load --hub_model_id, else the --output_dir folder's name, as train.py's cards do (they held
    the absolute --output_dir, a path of the converting machine)."""
    card = _converter_card_for(tmp_path).content
    assert 'model="conv_ok"' in card and str(tmp_path) not in card and card.startswith("---")
    assert "\n# conv_ok\n" in card
    pushed = _converter_card_for(tmp_path, hub_model_id="me/weclip-voc").content
    assert 'model="me/weclip-voc"' in pushed and "\n# weclip-voc\n" in pushed


def test_local_paths_are_not_named_as_base_model(tmp_path):
    from weclip_hf.model_loading import hub_id_or_none

    assert hub_id_or_none("openai/clip-vit-base-patch16") == "openai/clip-vit-base-patch16"
    assert hub_id_or_none(str(tmp_path)) is None  # a folder here
    assert hub_id_or_none("/no/such/deep/folder") is None  # no Hub id looks like this
    card = make_model_card(make_tiny_config(), "m", "source", base_model=str(tmp_path))
    assert card.data.base_model is None and str(tmp_path) not in str(card)


def test_a_local_folder_named_as_a_hub_id_is_not_one(tmp_path, monkeypatch):
    """A relative folder here whose name a Hub id could have ("my-clip", "me/clip") is the folder, not a Hub model."""
    from weclip_hf.model_loading import hub_id_or_none

    monkeypatch.chdir(tmp_path)
    for name in ("my-clip", "me/clip"):
        (tmp_path / name).mkdir(parents=True)
        assert hub_id_or_none(name) is None, name
    assert hub_id_or_none("me/other-clip") == "me/other-clip"  # no such folder: a Hub id


def test_other_metrics_are_listed_but_not_claimed_as_results():
    card = make_model_card(
        make_tiny_config(),
        "m",
        "source",
        metrics={"miou": 0.5},
        other_metrics={"cam_miou": 0.4},
        dataset_description="shapes (a local dataset)",
    )
    assert [(r.metric_name, r.dataset_name) for r in card.data.eval_results] == [
        ("miou", "shapes (a local dataset)")
    ]
    assert card.data.datasets is None
    assert "On shapes (a local dataset):" in card.content and "| cam_miou | 0.4000 |" in card.content


def test_a_weclip_plus_card_names_both_backbones():
    from conftest import make_tiny_plus_config

    clip, dino = "openai/clip-vit-base-patch16", "facebook/dinov2-small"
    card = make_model_card(make_tiny_plus_config(), "m", "source", base_model=[clip, dino])
    assert card.data.base_model == [clip, dino] and "dinov2" in card.data.tags and "clip" in card.data.tags
    assert make_model_card(make_tiny_config(), "m", "source", base_model=[clip, None]).data.base_model == clip
    assert "dinov2" not in make_model_card(make_tiny_config(), "m", "source").data.tags


def test_a_card_without_evaluation_declares_no_metric():
    card = make_model_card(make_tiny_config(), "m", "source")
    assert card.data.metrics is None and "No evaluation was run." in card.content
    assert make_model_card(make_tiny_config(), "m", "source", metrics={"miou": 0.5}).data.metrics == [
        "mean_iou"
    ]


def test_push_to_hub_ships_the_processor_saved_with_the_model(tmp_path, fake_hub):
    """A model loaded from a folder uploads that folder's image processor (its training's sizes and statistics),
    not a default one."""
    import torch

    from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPImageProcessor

    torch.manual_seed(0)
    config = make_tiny_config()
    WeCLIPForSemanticSegmentation(config).save_pretrained(tmp_path / "model")
    processor = WeCLIPImageProcessor(
        size={"height": 96, "width": 96}, patch_size=config.vision_config.patch_size
    )
    processor.save_pretrained(tmp_path / "model")
    WeCLIPForSemanticSegmentation.from_pretrained(tmp_path / "model").push_to_hub("toy")
    uploaded = fake_hub.uploaded[0]["copy"]
    assert WeCLIPImageProcessor.from_pretrained(uploaded).size == {"height": 96, "width": 96}


def test_push_to_hub_ships_the_processor_saved_in_a_subfolder_or_a_hub_repository(tmp_path, fake_hub, caplog):
    """A model loaded with subfolder= or from a Hub id (here through an offline cache) uploaded the default processor
    (long side 512), silently: the processor saved beside its weights is found where they were; the default, where
    there is none, is named in a warning."""
    import logging

    import torch

    from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPImageProcessor

    torch.manual_seed(0)
    config = make_tiny_config()
    size = {"height": 96, "width": 96}
    repo = tmp_path / "repo"
    WeCLIPForSemanticSegmentation(config).save_pretrained(repo / "sub")
    WeCLIPImageProcessor(size=size, patch_size=config.vision_config.patch_size).save_pretrained(repo / "sub")
    # the Hub cache's layout of the repository me/weclip-toy at one commit
    cache, commit = tmp_path / "cache", "0" * 40
    (cache / "models--me--weclip-toy" / "refs").mkdir(parents=True)
    (cache / "models--me--weclip-toy" / "refs" / "main").write_text(commit)
    shutil.copytree(repo / "sub", cache / "models--me--weclip-toy" / "snapshots" / commit)
    WeCLIPForSemanticSegmentation.from_pretrained(repo, subfolder="sub").push_to_hub("toy")
    WeCLIPForSemanticSegmentation.from_pretrained("me/weclip-toy", cache_dir=cache).push_to_hub("toy")
    for n in range(2):
        assert WeCLIPImageProcessor.from_pretrained(fake_hub.uploaded[n]["copy"]).size == size, n
    (repo / "sub" / "preprocessor_config.json").unlink()
    with caplog.at_level(logging.WARNING, logger="weclip_hf.hub"):
        WeCLIPForSemanticSegmentation.from_pretrained(repo, subfolder="sub").push_to_hub("toy")
    assert WeCLIPImageProcessor.from_pretrained(fake_hub.uploaded[2]["copy"]).size == {"longest_edge": 512}
    assert "no WeCLIP image processor saved where the model was loaded from" in caplog.text


def test_push_to_hub_ships_the_tokenizer_saved_with_the_model(tiny_clip, tmp_path, fake_hub):
    """A WeCLIP+ model loaded from a training run's folder uploaded its weights, config and processor but not the
    CLIP tokenizer saved beside them (train.py's, the converter's), so the repository could not take new classes
    (`update_class_embeddings`) offline: the tokenizer saved where the model was loaded from is uploaded too, and
    none where none was saved (tokenizer_config.json alone holds no vocabulary and is left out)."""
    from conftest import make_tiny_plus_config
    from transformers import AutoModelForSemanticSegmentation, AutoTokenizer

    from weclip_hf.hub import TOKENIZER_FILES

    folder = tmp_path / "run"
    AutoModelForSemanticSegmentation.from_config(make_tiny_plus_config()).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_clip).save_pretrained(folder)
    model = AutoModelForSemanticSegmentation.from_pretrained(folder)
    model.push_to_hub("plus")
    assert set(TOKENIZER_FILES) <= set(fake_hub.uploaded[0]["files"])
    # the card names the class that uploaded it (a WeCLIP+'s said WeCLIPForSemanticSegmentation.push_to_hub)
    card = (fake_hub.uploaded[0]["copy"] / "README.md").read_text()
    assert "Uploaded with `WeCLIPPlusForSemanticSegmentation.push_to_hub`." in card
    # and so does the default commit message (was "Upload WeCLIP model" for either)
    assert fake_hub.uploaded[0]["commit_message"] == "Upload WeCLIPPlusForSemanticSegmentation"
    assert AutoTokenizer.from_pretrained(fake_hub.uploaded[0]["copy"]).get_vocab() == (
        AutoTokenizer.from_pretrained(tiny_clip).get_vocab()
    )
    (folder / "tokenizer.json").unlink()
    AutoModelForSemanticSegmentation.from_pretrained(folder).push_to_hub("plus")
    assert not set(TOKENIZER_FILES) & set(fake_hub.uploaded[1]["files"])


def other_tokenizer_folder(tokenizer_folder: str, folder: Path) -> Path:
    """``folder`` holding a copy of the tokenizer of ``tokenizer_folder`` with the ids of "d" and "e" swapped: as
    many ids, the same special tokens, other ids for the prompt of a class "dog"."""
    import json

    folder.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(Path(tokenizer_folder) / name, folder / name)
    saved = json.loads((folder / "tokenizer.json").read_text())
    vocab = saved["model"]["vocab"]
    vocab["d"], vocab["e"] = vocab["e"], vocab["d"]
    (folder / "tokenizer.json").write_text(json.dumps(saved))
    return folder


def test_push_to_hub_ships_the_tokenizer_that_made_the_text_embeddings(tiny_clip, tmp_path, fake_hub, caplog):
    """A model loaded from a folder whose class embeddings were then rebuilt with another tokenizer
    (`update_class_embeddings`) uploaded the tokenizer saved in that folder: the repository's tokenizer was not that
    of its embeddings, and an update_class_embeddings with it (offline, for new classes) encoded the prompts
    otherwise than the embeddings the model holds. The tokenizer that made them is uploaded; a save_pretrained
    with push_to_hub too, and a model loaded again uploads its folder's."""
    import torch
    from transformers import AutoTokenizer

    from weclip_hf import WeCLIPForSemanticSegmentation
    from weclip_hf.hub import TOKENIZER_FILES

    folder = tmp_path / "run"
    WeCLIPForSemanticSegmentation.from_clip(
        tiny_clip, class_names=["cat"], background_names=["sky"]
    ).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_clip).save_pretrained(folder)
    other = AutoTokenizer.from_pretrained(other_tokenizer_folder(tiny_clip, tmp_path / "other"))
    assert other("dog")["input_ids"] != AutoTokenizer.from_pretrained(folder)("dog")["input_ids"]
    model = WeCLIPForSemanticSegmentation.from_pretrained(folder)
    model.update_class_embeddings(other, class_names=["dog"])
    model.push_to_hub("dogs")
    model.save_pretrained(tmp_path / "dogs", push_to_hub=True)
    for commit in fake_hub.uploaded:
        uploaded = AutoTokenizer.from_pretrained(commit["copy"])
        assert uploaded("dog")["input_ids"] == other("dog")["input_ids"]
        again = WeCLIPForSemanticSegmentation.from_pretrained(commit["copy"])
        again.update_class_embeddings(uploaded)
        torch.testing.assert_close(again.class_text_embeds, model.class_text_embeds)
    # a model loaded from a folder: the tokenizer saved there (it made the embeddings saved there)
    WeCLIPForSemanticSegmentation.from_pretrained(folder).push_to_hub("cats")
    uploaded = AutoTokenizer.from_pretrained(fake_hub.uploaded[-1]["copy"])
    assert uploaded("dog")["input_ids"] == AutoTokenizer.from_pretrained(folder)("dog")["input_ids"]
    # a tokenizer that cannot be saved: none uploaded (not the folder's), with a warning
    model.update_class_embeddings(lambda *args, **kwargs: other(*args, **kwargs))
    model.push_to_hub("dogs")
    assert not set(TOKENIZER_FILES) & set(fake_hub.uploaded[-1]["files"])
    assert "saves no tokenizer.json, so no tokenizer is uploaded" in caplog.text


def test_save_pretrained_with_push_to_hub_uploads_as_push_to_hub(tmp_path, fake_hub):
    """transformers' save_pretrained(..., push_to_hub=True) uploaded the weights with a placeholder card and no
    image processor: it saves the folder, then uploads as push_to_hub (repo_id: the folder's name by default)."""
    from huggingface_hub import ModelCard

    from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPImageProcessor

    commits = fake_hub.uploaded
    model = WeCLIPForSemanticSegmentation(make_tiny_config())
    model.save_pretrained(tmp_path / "weclip-cats", push_to_hub=True, commit_message="first", tags=["pets"])
    model.save_pretrained(
        tmp_path / "local", push_to_hub=True, repo_id="me/weclip-dogs", max_shard_size="1GB"
    )
    assert (tmp_path / "weclip-cats" / "model.safetensors").is_file()
    assert [c["repo_id"] for c in commits] == ["me/weclip-cats", "me/weclip-dogs"]
    assert commits[0]["commit_message"] == "first"
    for commit in commits:
        assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= set(
            commit["files"]
        )
        WeCLIPImageProcessor.from_pretrained(commit["copy"])
    assert "pets" in ModelCard.load(commits[0]["copy"] / "README.md").data.tags


def test_push_to_hub_of_a_model_built_in_memory_ships_a_processor_of_its_ignore_index(fake_hub):
    from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPImageProcessor

    config = make_tiny_config(semantic_loss_ignore_index=100)
    WeCLIPForSemanticSegmentation(config).push_to_hub("toy")
    processor = WeCLIPImageProcessor.from_pretrained(fake_hub.uploaded[0]["copy"])
    assert processor.ignore_index == 100 and processor.patch_size == config.vision_config.patch_size


def test_push_to_hub_of_a_model_built_on_a_clip_folder_ships_a_weclip_processor_tags_and_description(
    tiny_clip, tmp_path, fake_hub
):
    """A model built with from_clip on a local CLIP folder has that folder as its _name_or_path, whose processor is
    CLIP's: push_to_hub failed on it, after creating the repository. tags= and commit_description= were dropped."""
    from huggingface_hub import ModelCard
    from transformers import CLIPImageProcessor

    from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPImageProcessor

    clip = tmp_path / "clip"
    shutil.copytree(tiny_clip, clip)
    CLIPImageProcessor().save_pretrained(clip)
    model = WeCLIPForSemanticSegmentation.from_clip(str(clip), class_names=["cat"], background_names=["sky"])
    model.push_to_hub("cats", tags=["pets"], commit_description="first upload")
    (commit,) = fake_hub.uploaded
    processor = WeCLIPImageProcessor.from_pretrained(commit["copy"])
    assert processor.patch_size == model.config.vision_config.patch_size and processor.size == {
        "longest_edge": 512
    }
    assert "pets" in ModelCard.load(commit["copy"] / "README.md").data.tags
    assert commit["commit_description"] == "first upload"


def test_a_model_that_cannot_be_saved_creates_no_repository(fake_hub):
    from weclip_hf import WeCLIPForSemanticSegmentation

    model = WeCLIPForSemanticSegmentation(make_tiny_config())
    with pytest.raises(TypeError, match="not supported between instances of 'int' and 'object'"):
        model.push_to_hub("toy", max_shard_size=object())  # save_pretrained refuses it
    assert fake_hub.created == []


def test_a_repository_that_cannot_be_created_is_named_with_the_remedy_of_its_cause(fake_hub):
    """Offline mode, no network, a refused token, an error of the Hub: each said "Log in (`hf auth login`) or pass
    a token with write access", the remedy of one cause."""
    import requests
    from huggingface_hub.errors import OfflineModeIsEnabled

    from weclip_hf.hub import create_hub_repo

    causes = [
        ("Offline mode is on \\(HF_HUB_OFFLINE=1\\)", OfflineModeIsEnabled("offline")),
        ("cannot be reached from here", requests.ConnectionError("no route")),
        ("Log in \\(`hf auth login`\\)", 401),
        ("The Hub answered with an error", 500),
        ("Log in \\(`hf auth login`\\)", 403),  # a token without write access: 401's remedy
    ]
    for remedy, err in causes:
        fake_hub.fail("create_repo", err)
        with pytest.raises(
            RuntimeError, match=f"Cannot create or reach the Hub repository 'me/m' .*{remedy}"
        ):
            create_hub_repo("me/m")


def test_a_failed_upload_says_the_folder_is_intact_and_how_to_publish_it(tmp_path, fake_hub):
    from weclip_hf import WeCLIPForSemanticSegmentation
    from weclip_hf.hub import publish_folder

    WeCLIPForSemanticSegmentation(make_tiny_config()).save_pretrained(tmp_path)
    fake_hub.fail("upload_folder", ConnectionError("network down"))
    with pytest.raises(RuntimeError, match=r"failed \(ConnectionError: network down\); the folder is intact"):
        publish_folder(tmp_path, "toy")


def test_hub_errors_never_quote_the_token(tmp_path, fake_hub):
    """A token with a stray line end (``hf_SeCrEt\\r``, read from a CRLF file) made httpx refuse the request with
    ``LocalProtocolError: Illegal header value b'Bearer hf_SeCrEt\\r'``, which create_hub_repo and publish_folder
    put verbatim into their errors (and chained, so that a traceback printed it again), saying "check the network
    connection". Now the token is redacted from the text, the cause that quotes it is not chained, and the remedy
    says to strip it; an error that does not quote the token is still chained."""
    import traceback

    from weclip_hf import WeCLIPForSemanticSegmentation
    from weclip_hf.hub import REDACTED_TOKEN, create_hub_repo, publish_folder

    class LocalProtocolError(Exception):
        pass

    def refused(token: str) -> LocalProtocolError:
        return LocalProtocolError(f"Illegal header value {f'Bearer {token}'.encode()!r}")

    def shown(err: BaseException) -> str:
        """What a traceback of ``err`` says, its chained causes too (no source lines: the test's own quote it)."""
        return "".join(traceback.format_exception(err, limit=0))

    for token in ("hf_SeCrEt\r", "hf_SeC\x00rEt\n"):
        fake_hub.fail("create_repo", refused(token))
        with pytest.raises(RuntimeError, match="Cannot create or reach") as raised:
            create_hub_repo("me/m", token=token)
        assert fake_hub.created[-1]["token"] == token  # the token the error quotes
        message = str(raised.value)
        assert "SeC" not in shown(raised.value) and "rEt" not in shown(raised.value)
        assert f"b'Bearer {REDACTED_TOKEN}'" in message
        assert "strip it" in message and "network" not in message and raised.value.__cause__ is None
    WeCLIPForSemanticSegmentation(make_tiny_config()).save_pretrained(tmp_path)
    fake_hub.fail("create_repo", None)
    fake_hub.fail("upload_folder", refused("hf_SeCrEt\r"))
    with pytest.raises(RuntimeError, match="the folder is intact") as raised:
        publish_folder(tmp_path, "me/m", token="hf_SeCrEt\r")
    assert fake_hub.uploaded[-1]["token"] == "hf_SeCrEt\r"
    assert "SeCrEt" not in shown(raised.value) and f"b'Bearer {REDACTED_TOKEN}'" in str(raised.value)
    assert raised.value.__cause__ is None

    fake_hub.fail("upload_folder", ConnectionError("network down"))
    with pytest.raises(RuntimeError, match=r"\(ConnectionError: network down\)") as raised:
        publish_folder(tmp_path, "me/m", token="hf_SeCrEt")
    assert isinstance(raised.value.__cause__, ConnectionError)


def test_a_converted_weclip_plus_card_names_the_official_dinov2():
    from conftest import make_tiny_plus_config

    from weclip_hf.configuration_weclip_plus import dino_variant_config

    args = Namespace(
        checkpoint="x.pth",
        clip=None,
        tokenizer=None,
        preset="voc-plus",
        output_dir="o",
        hub_model_id=None,
        class_names=None,
    )
    config = _official_sized(make_tiny_plus_config(dino_config=dino_variant_config("dinov2_vits14")))
    model = SimpleNamespace(config=config, conversion_report=ConversionReport())
    card = _import_example("convert_official_checkpoint").build_model_card(args, model, "ab" * 32)
    assert card.data.base_model == ["openai/clip-vit-base-patch16", "facebook/dinov2-small"]
    assert "dinov2" in card.data.tags and card.data.metrics is None
    assert "(`modeling_weclip_plus.py` and the files it" in str(
        card
    )  # the code a remote-code user should read


def test_a_model_built_from_hub_backbones_names_them_as_its_base_model(tiny_clip, tmp_path, monkeypatch):
    """`from_clip` / `from_clip_and_dino` record the backbones' Hub ids (never a local folder) in the config, so
    that `push_to_hub`'s and `WeCLIPTrainer`'s cards name them as ``base_model`` (they had none). The Hub ids are
    served offline from a Hub cache holding the tiny checkpoints."""
    import torch
    from transformers import AutoModel, Dinov2Config

    from weclip_hf import WeCLIPForSemanticSegmentation, WeCLIPPlusForSemanticSegmentation

    def cached(repo_id: str, folder: Path) -> None:
        """``folder`` as the main revision of ``repo_id`` in the Hub cache at ``tmp_path / "hub"``."""
        repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
        shutil.copytree(folder, repo / "snapshots" / ("0" * 40))
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0" * 40)

    torch.manual_seed(0)
    AutoModel.from_config(Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, patch_size=4, image_size=32)).save_pretrained(tmp_path / "dino")  # fmt: skip
    cached("me/tiny-clip", Path(tiny_clip))
    cached("me/tiny-dino", tmp_path / "dino")
    monkeypatch.chdir(tmp_path)
    options = dict(cache_dir=str(tmp_path / "hub"), local_files_only=True)
    model = WeCLIPPlusForSemanticSegmentation.from_clip_and_dino("me/tiny-clip", "me/tiny-dino", **options)
    model.save_pretrained(tmp_path / "saved")
    loaded = WeCLIPPlusForSemanticSegmentation.from_pretrained(tmp_path / "saved")
    card = make_model_card(loaded.config, "weclip-plus", "Uploaded.")
    assert card.data.base_model == ["me/tiny-clip", "me/tiny-dino"]
    assert "A frozen CLIP (me/tiny-clip)" in str(card)
    local = WeCLIPForSemanticSegmentation.from_clip(tiny_clip)  # a local folder: not recorded
    assert make_model_card(local.config, "weclip", "Uploaded.").data.base_model is None


def test_publishing_uploads_the_model_and_its_code_never_other_files_or_links(tmp_path):
    """The allow-list took every *.py and overlays/*.png of the folder (a planted deploy.py with a token was
    uploaded) and followed links (a metrics.json linking to a secret outside the folder uploaded the secret)."""
    import torch

    from weclip_hf import WeCLIPForSemanticSegmentation
    from weclip_hf.hub import publishable_files

    run, outside = tmp_path / "run", tmp_path / "outside"
    torch.manual_seed(0)
    WeCLIPForSemanticSegmentation(make_tiny_config()).save_pretrained(run)
    code = {p.name for p in run.glob("*.py")}
    assert {"modeling_weclip.py", "par_kernels.py"} <= code
    outside.mkdir()
    (outside / "secret.env").write_text("HF_TOKEN=hf_secret\n")
    (run / "deploy.py").write_text('TOKEN = "hf_secret"\n')
    (run / "overlays").mkdir()
    for name in ("val_000.png", "figure1.png"):
        (run / "overlays" / name).write_bytes(b"png")
    (run / "metrics.json").symlink_to(outside / "secret.env")
    (run / "overlays" / "val_009.png").symlink_to(outside / "secret.env")
    files = publishable_files(run)
    assert {f for f in files if f.endswith(".py")} == code  # what save_pretrained shipped, not deploy.py
    assert "overlays/val_000.png" in files and "model.safetensors" in files
    assert not {"deploy.py", "overlays/figure1.png", "metrics.json", "overlays/val_009.png"} & set(files)
    shutil.rmtree(run / "overlays")
    (run / "overlays").symlink_to(outside)
    (outside / "val_001.png").write_bytes(b"png")
    assert not [f for f in publishable_files(run) if f.startswith("overlays")]  # behind a linked folder


def test_publishing_takes_exactly_the_allow_list(tmp_path, fake_hub):
    """`publishable_files` of a run folder: a sharded model (its index and shards), the card and figures, the code
    auto_map names; never another .safetensors, the run's logs, arguments or checkpoints, a hidden file, nor the
    code that a linked config.json names (a link planted there would choose what is uploaded)."""
    import json

    import torch

    from weclip_hf import WeCLIPForSemanticSegmentation
    from weclip_hf.hub import publish_folder, publishable_files

    run = tmp_path / "run"
    torch.manual_seed(0)
    WeCLIPForSemanticSegmentation(make_tiny_config()).save_pretrained(run, max_shard_size="100KB")
    shards = sorted(p.name for p in run.glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (run / "model.safetensors").exists()
    code = {p.name for p in run.glob("*.py")}
    for name in ("README.md", "metrics.json", "eval_results.json", "train_log.jsonl", "training_args.bin"):
        (run / name).write_text("{}")
    for name in ("optimizer.safetensors", "step_1/model.safetensors", ".hidden.json"):
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_text("{}")
    expected = {
        "config.json",
        "model.safetensors.index.json",
        "README.md",
        "metrics.json",
        "eval_results.json",
    }
    assert set(publishable_files(run)) == expected | set(shards) | code
    publish_folder(run, "me/m")  # no model.safetensors: its shards and their index
    assert fake_hub.uploaded[0]["files"] == publishable_files(run)
    # a crafted auto_map naming a hidden module (".py"), then a config.json linked to one naming deploy.py
    outside = tmp_path / "outside.json"
    config = json.loads((run / "config.json").read_text())
    outside.write_text(
        json.dumps({**config, "auto_map": {"AutoModel": "deploy.Model", "AutoConfig": ".Config"}})
    )
    (run / "deploy.py").write_text('TOKEN = "hf_secret"\n')
    (run / ".py").write_text('TOKEN = "hf_secret"\n')
    shutil.copy(outside, run / "config.json")
    assert ".py" not in publishable_files(run) and "deploy.py" in publishable_files(run)
    (run / "config.json").unlink()
    (run / "config.json").symlink_to(outside)
    assert not {"deploy.py", "config.json"} & set(publishable_files(run))


def test_publishing_uploads_the_allow_list_to_the_repository_and_revision_asked(tmp_path, fake_hub):
    """publish_folder uploads exactly `publishable_files` (names holding glob characters too) to an existing or new
    repository (exist_ok), of the privacy and revision asked; push_to_hub creates it as private as asked."""
    from weclip_hf import WeCLIPForSemanticSegmentation
    from weclip_hf.hub import publish_folder, publishable_files

    created, uploaded = fake_hub.created, fake_hub.uploaded
    model = WeCLIPForSemanticSegmentation(make_tiny_config())
    model.save_pretrained(tmp_path)
    (tmp_path / "overlays").mkdir()
    (tmp_path / "overlays" / "val_[1].png").write_bytes(b"png")
    (tmp_path / "deploy.py").write_text('TOKEN = "hf_secret"\n')
    publish_folder(tmp_path, "me/m", private=True, revision="v1")
    assert (
        uploaded[0]["files"] == publishable_files(tmp_path) and "overlays/val_[1].png" in uploaded[0]["files"]
    )
    assert uploaded[0]["revision"] == "v1"
    model.push_to_hub("me/p", private=True)
    assert [(c["repo_id"], c["exist_ok"], c["private"]) for c in created] == [("me/m", True, True)] + [
        ("me/p", True, True)
    ] * 2


def test_hub_errors_never_quote_the_token_however_it_is_cut(fake_hub):
    """An error that quotes the token without its stray line end (what a library stripped) still has it redacted,
    and a token ending in a space is named as one holding whitespace."""
    from weclip_hf.hub import REDACTED_TOKEN, create_hub_repo

    for token in ("hf_SeCrEt\n", "hf_SeCrEt "):
        fake_hub.fail("create_repo", ValueError(f"bad header Bearer {token.strip()}"))
        with pytest.raises(RuntimeError, match="strip it") as raised:
            create_hub_repo("me/m", token=token)
        assert "SeCrEt" not in str(raised.value) and f"Bearer {REDACTED_TOKEN}" in str(raised.value)


def test_only_the_models_own_results_are_claimed():
    from weclip_hf.model_card import split_model_metrics

    figures = {"miou": 0.5, "miou_msf_crf": 0.6, "cam_miou": 0.4, "pseudo_label_miou": 0.45}
    assert split_model_metrics(figures) == (
        {"miou": 0.5, "miou_msf_crf": 0.6},
        {"cam_miou": 0.4, "pseudo_label_miou": 0.45},
    )


def test_a_config_json_that_is_no_object_is_named_when_publishing(tmp_path):
    """A model folder's config.json holding a JSON array ended the list of files to publish in an AttributeError;
    now one ValueError naming the file."""
    from weclip_hf.hub import shipped_code_files

    (tmp_path / "config.json").write_text('["AutoModel"]')
    with pytest.raises(
        ValueError, match=f"^{tmp_path / 'config.json'}: holds a JSON array, expected a JSON object"
    ):
        shipped_code_files(tmp_path)
