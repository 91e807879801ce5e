"""The label names: ``config.id2label`` is their one source, whichever way a user renames them (on the config, in
config.json, at loading, with new class embeddings), and what the model computes its text embeddings from
(``class_names``) cannot be changed at loading."""

import json
import re

import pytest
import torch
from conftest import TINY_TEXT, CharTokenizer, make_tiny_config
from transformers import AutoConfig, AutoModelForSemanticSegmentation, pipeline

from weclip_hf import WeCLIPConfig, WeCLIPForSemanticSegmentation, WeCLIPImageProcessor

RENAMED = {0: "bg", 1: "kitten", 2: "puppy", 3: "truck", 4: "oak"}


@pytest.fixture
def saved(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "model")
    patch = tiny_model.config.vision_config.patch_size
    WeCLIPImageProcessor(size={"longest_edge": 32}, patch_size=patch).save_pretrained(tmp_path / "model")
    return tmp_path / "model"


def test_id2label_set_on_the_config_is_saved_and_loaded(tiny_model, tmp_path):
    tiny_model.config.id2label = RENAMED
    assert tiny_model.config.label2id == {name: i for i, name in RENAMED.items()}
    assert tiny_model.config.label_names == ["kitten", "puppy", "truck", "oak"]
    tiny_model.save_pretrained(tmp_path / "renamed")
    assert AutoConfig.from_pretrained(tmp_path / "renamed").id2label == RENAMED
    loaded = WeCLIPForSemanticSegmentation.from_pretrained(tmp_path / "renamed")
    assert loaded.config.id2label == RENAMED and loaded.config.label_names == [
        "kitten",
        "puppy",
        "truck",
        "oak",
    ]


def test_id2label_edited_in_config_json_names_the_pipeline_segments(saved):
    config = json.loads((saved / "config.json").read_text())
    config["id2label"] = {str(i): name for i, name in RENAMED.items()}
    (saved / "config.json").write_text(json.dumps(config))
    segmenter = pipeline("image-segmentation", model=str(saved))
    labels = {segment["label"] for segment in segmenter(torch.rand(3, 40, 30).numpy().transpose(1, 2, 0))}
    assert labels and labels <= set(RENAMED.values())


@pytest.mark.parametrize(
    "override",
    [dict(label_names=["kitten", "puppy", "truck", "oak"]), dict(id2label=RENAMED)],
    ids=["label_names", "id2label"],
)
def test_names_given_at_loading_rename_the_labels_in_memory_and_once_saved(saved, tmp_path, override):
    loaded = AutoModelForSemanticSegmentation.from_pretrained(saved, **override)
    assert loaded.config.label_names == ["kitten", "puppy", "truck", "oak"]
    assert [loaded.config.id2label[i] for i in range(1, 5)] == loaded.config.label_names
    loaded.save_pretrained(tmp_path / "again")
    assert AutoConfig.from_pretrained(tmp_path / "again").id2label == loaded.config.id2label


@pytest.mark.parametrize("field", ["class_names", "background_names", "prompt_template"])
@pytest.mark.parametrize(
    "load", [WeCLIPForSemanticSegmentation.from_pretrained, AutoModelForSemanticSegmentation.from_pretrained]
)
def test_names_of_the_stored_text_embeddings_cannot_change_at_loading(saved, field, load):
    value = "a {} here." if field == "prompt_template" else ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match=f"{field}.*update_class_embeddings"):
        load(saved, **{field: value})
    config = AutoConfig.from_pretrained(saved, **{field: value})  # the config alone may say anything
    with pytest.raises(ValueError, match=f"{field}.*update_class_embeddings"):
        load(saved, config=config)


def test_an_id2label_of_another_size_is_refused():
    config = make_tiny_config()
    with pytest.raises(ValueError, match="id2label must name ids 0..4"):
        config.id2label = {0: "background", 1: "cat"}
    with pytest.raises(ValueError, match="id2label must name ids 0..4"):
        config.num_labels = 3  # transformers' setter rebuilds id2label
    with pytest.raises(ValueError, match="id2label must name ids 0..4"):
        make_tiny_config(id2label={0: "background", 1: "cat"})
    assert config.id2label == make_tiny_config().id2label  # untouched by the refused assignments


def test_label_names_and_id2label_that_disagree_are_refused():
    with pytest.raises(ValueError, match="name the classes differently"):
        make_tiny_config(label_names=["a", "b", "c", "d"], id2label=RENAMED)
    same = make_tiny_config(label_names=["kitten", "puppy", "truck", "oak"], id2label=RENAMED)
    assert same.id2label == RENAMED


def test_config_json_of_before_reads_its_label_names(saved):
    """Files written before id2label was the source carry ``label_names``, which named the labels then (an
    ``update_class_embeddings(label_names=...)`` of the same class count did not update their ``id2label``): they
    load with the names they showed."""
    config = json.loads((saved / "config.json").read_text())
    config["label_names"] = ["CAT", "DOG", "CAR", "TREE"]  # its id2label still says cat, dog, car, tree
    (saved / "config.json").write_text(json.dumps(config))
    loaded = AutoConfig.from_pretrained(saved)
    assert loaded.label_names == ["CAT", "DOG", "CAR", "TREE"] and loaded.id2label[1] == "CAT"
    assert AutoConfig.from_pretrained(saved, id2label=RENAMED).id2label == RENAMED  # the caller's names win


def test_values_given_at_loading_are_validated(saved):
    with pytest.raises(ValueError, match="decoder_hidden_size must be an integer"):
        AutoConfig.from_pretrained(saved, decoder_hidden_size=-3)
    with pytest.raises(ValueError, match="decoder_hidden_size must be an integer"):
        WeCLIPForSemanticSegmentation.from_pretrained(saved, decoder_hidden_size=-3)
    config, unused = WeCLIPConfig.from_pretrained(saved, return_unused_kwargs=True, rfm_start_step=7, foo=1)
    assert config.rfm_start_step == 7 and unused == {"foo": 1}


def test_a_model_in_a_subfolder_loads(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "repo" / "model")
    for load in (
        WeCLIPForSemanticSegmentation.from_pretrained,
        AutoModelForSemanticSegmentation.from_pretrained,
    ):
        loaded = load(tmp_path / "repo", subfolder="model")
        torch.testing.assert_close(loaded.class_text_embeds, tiny_model.class_text_embeds)


@pytest.mark.parametrize("content", ["", "{}", "[1, 2]"])
def test_a_config_json_that_is_not_a_model_config_is_named(saved, content):
    (saved / "config.json").write_text(content)
    with pytest.raises(ValueError, match="config.json"):
        WeCLIPForSemanticSegmentation.from_pretrained(saved)


def test_new_class_names_become_the_display_names(tiny_model):
    tiny_model.update_class_embeddings(CharTokenizer(), class_names=["boat", "bird", "sofa", "cow"])
    assert tiny_model.config.id2label == {0: "background", 1: "boat", 2: "bird", 3: "sofa", 4: "cow"}
    tiny_model.update_class_embeddings(CharTokenizer(), label_names=["Boat", "Bird", "Sofa", "Cow"])
    assert tiny_model.config.class_names == ["boat", "bird", "sofa", "cow"]
    assert tiny_model.config.label_names == ["Boat", "Bird", "Sofa", "Cow"]
    with pytest.raises(ValueError, match="label_names has 1 entries but class_names has 4"):
        tiny_model.update_class_embeddings(CharTokenizer(), label_names=["x"])
    with pytest.raises(ValueError, match="label_names must be strings"):
        tiny_model.update_class_embeddings(CharTokenizer(), class_names=["a", "b"], label_names=[1, 2])
    assert tiny_model.config.class_names == ["boat", "bird", "sofa", "cow"]
    assert tiny_model.config.label_names == ["Boat", "Bird", "Sofa", "Cow"]  # nothing changed by the refusal


def test_class_names_whose_prompts_clip_would_cut_are_refused(tiny_model):
    """Prompts longer than the text tower's positions were cut without a word: two class names that differ only
    past that point got one embedding (cosine 1.0), and the second class never won a pixel. Distinct embeddings
    otherwise (the tiny tokenizer's prompts used to be cut at 16 tokens to one common prefix)."""
    tiny_model.update_class_embeddings(CharTokenizer(), class_names=["boat", "bird"])
    boat, bird = tiny_model.class_text_embeds
    assert float(boat @ bird) < 0.999
    positions = tiny_model.config.text_config.max_position_embeddings
    long_names = ["very " * (positions // 5) + colour + " car" for colour in ("red", "blue")]
    with pytest.raises(ValueError, match=rf"is \d+ tokens long .* CLIP reads {positions}: it would be cut \(2 "
                       r"prompt\(s\) of 2\)\. Shorten that class name"):  # fmt: skip
        tiny_model.update_class_embeddings(CharTokenizer(), class_names=long_names)
    assert tiny_model.config.class_names == ["boat", "bird"]  # nothing changed by the refusal
    # a prompt of exactly the tokens CLIP reads (its start and end tokens included) is not cut: taken
    fits = "x" * (positions - 2 - len(tiny_model.config.prompt_template.format("")))
    tiny_model.update_class_embeddings(CharTokenizer(), class_names=[fits, "bird"])
    assert tiny_model.config.class_names == [fits, "bird"]


def test_label_names_given_at_loading_keep_the_background_name(tiny_model, tmp_path):
    tiny_model.config.id2label = RENAMED  # background shown as "bg"
    tiny_model.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path, label_names=["a", "b", "c", "d"])
    assert loaded.id2label == {0: "bg", 1: "a", 2: "b", 3: "c", 4: "d"}
    with pytest.raises(ValueError, match="label_names has 1 entries but class_names has 4"):
        AutoConfig.from_pretrained(tmp_path, label_names=["a"])


def test_config_names_label_names_that_are_not_strings():
    """(was: "id2label must name ids 0..2 ..., got ids [0, 1, 2]", blaming the ids)"""
    with pytest.raises(ValueError, match=r"label_names must be strings, got \[1, 2\]"):
        WeCLIPConfig(class_names=["a", "b"], label_names=[1, 2])


FIVE = ["cat", "dog", "car", "tree", "bus"]


def test_class_names_set_on_a_built_config_renumber_its_labels(tmp_path):
    """(was: num_labels stayed at 5 from id2label while num_foreground_classes said 5 classes: a model of it
    crashed in the loss on "index 5 is out of bounds" and did not save)"""
    config = make_tiny_config(id2label=RENAMED)
    config.class_names = FIVE
    assert config.num_labels == 6 and config.num_foreground_classes == 5 and config.label_names == FIVE
    assert config.id2label == {0: "bg", **dict(enumerate(FIVE, 1))}  # the background's display name kept
    assert config.label2id == {name: i for i, name in config.id2label.items()}
    config.save_pretrained(tmp_path)
    assert WeCLIPConfig.from_pretrained(tmp_path).id2label == config.id2label
    config.label_names = ["Cat", "Dog", "Car", "Tree", "Bus"]
    assert config.id2label[0] == "bg"  # label_names name the foreground classes: the background's name kept
    config.class_names = list(FIVE)  # the same names: the display names stay
    assert config.label_names == ["Cat", "Dog", "Car", "Tree", "Bus"]
    for bad, message in (
        ("bus", "must be a list of names"),
        (["a", "a"], "more than once"),
        ([], "at least one"),
    ):
        with pytest.raises(ValueError, match=message):
            config.class_names = bad
    assert config.class_names == FIVE and config.num_labels == 6  # untouched by the refused assignments


def test_num_labels_that_fits_the_class_names_is_taken_and_any_other_refused(tmp_path):
    """transformers' num_labels (a keyword, as ``from_pretrained(folder, num_labels=...)`` passes it) counts the
    background too: the class count + 1 is the labels' own count, the class count alone is refused, naming it."""
    assert make_tiny_config(num_labels=5).id2label == make_tiny_config().id2label  # 4 classes + background
    assert WeCLIPConfig(num_labels=21).num_labels == 21  # VOC's 20 classes
    with pytest.raises(
        ValueError, match=r"num_labels \(4\) must equal the number of class_names \+ 1 .* = 5"
    ):
        make_tiny_config(num_labels=4)
    make_tiny_config().save_pretrained(tmp_path)
    assert WeCLIPConfig.from_pretrained(tmp_path, num_labels=5).num_labels == 5


def test_a_model_of_a_config_given_new_class_names_trains():
    config = make_tiny_config()
    config.class_names = FIVE
    model = WeCLIPForSemanticSegmentation(config).train()
    class_labels = torch.zeros(2, 5)
    class_labels[:, 4] = 1
    out = model(torch.randn(2, 3, 32, 32), class_labels=class_labels, use_rfm=False)
    assert out.logits.shape[1] == 6 and torch.isfinite(out.loss)


def test_class_names_changed_under_a_built_model_are_refused_by_name(tiny_model):
    """Another count or the same count of other names (the model kept the old classes' text embeddings while
    id2label showed the new names)."""
    encoded = list(tiny_model.config.class_names)
    prompts = [tiny_model.config.prompt_template.format(name) for name in encoded]
    pixel_values = torch.randn(1, 3, 32, 32)
    for names in (FIVE, ["w", "x", "y", "z"]):
        tiny_model.config.class_names = names
        with pytest.raises(
            ValueError,
            match=rf"the text embeddings encode \{prompts!r}.*update_class_embeddings\(tokenizer, class_na",
        ):
            tiny_model(pixel_values)
    tiny_model.config.class_names = encoded
    assert tiny_model(pixel_values).logits.shape[1] == 5  # back to the encoded names: accepted
    tiny_model.config.class_names = FIVE
    tiny_model.update_class_embeddings(CharTokenizer(), class_names=FIVE)  # as the message says
    assert tiny_model(pixel_values).logits.shape[1] == 6


@pytest.mark.parametrize(
    "field, value", [("background_names", ["sea"]), ("prompt_template", "a photo of a {}.")]
)
def test_background_words_or_template_changed_under_a_built_model_are_refused(tiny_model, field, value):
    """The class names were checked, not the other inputs of the text embeddings: a new template or background
    word on a built model's config ran with the old embeddings."""
    setattr(tiny_model.config, field, value)
    with pytest.raises(ValueError, match=r"where the text embeddings encode .*update_class_embeddings"):
        tiny_model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize(
    "field, value",
    [
        ("class_names", ["car", "dog", "cat", "tree"]),
        ("prompt_template", "a photo of a {}."),
        ("background_names", ["sea", "grass", "road"]),
    ],
)
def test_text_embedding_names_edited_in_config_json_are_refused_at_loading(
    tiny_model, tmp_path, field, value
):
    """config.json's class_names (or template, background words) edited by hand loaded silently with the old
    text embeddings: the CAM of "car" made with the "cat" prompt. The config records the prompts of the stored
    embeddings (``encoded_prompts``), which loading compares; a config.json of before, without them, loads."""
    tiny_model.update_class_embeddings(CharTokenizer())
    tiny_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["encoded_prompts"]["class"] == ["a clean origami cat.", "a clean origami dog.",
                                                  "a clean origami car.", "a clean origami tree."]  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(ValueError, match=r"gives the .* prompts .* where the text embeddings encode .*edited in "
                       r"config.json\?\). Restore them"):  # fmt: skip
        WeCLIPForSemanticSegmentation.from_pretrained(tmp_path)
    del config["encoded_prompts"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = WeCLIPForSemanticSegmentation.from_pretrained(tmp_path)  # a folder of before: taken as its names
    assert loaded.config.encoded_prompts == tiny_model.config.encoded_prompts


def test_a_weak_label_forward_on_placeholder_text_embeddings_warns(tiny_config, tmp_path, caplog):
    """A model built from its config (CLIP weights loaded by name with load_state_dict) trained on random
    placeholder text embeddings without a word; computed or loaded embeddings are no placeholders."""
    import logging

    from transformers.utils import logging as hf_logging

    def warnings_of(step) -> str:
        caplog.clear()
        hf_logging.get_logger("weclip_hf.class_embeddings").warning_once.cache_clear()
        with caplog.at_level(logging.WARNING):
            step()
        return caplog.text

    model = WeCLIPForSemanticSegmentation(tiny_config)
    pixel_values, class_labels = torch.randn(1, 3, 32, 32), torch.tensor([[1.0, 0, 0, 0]])
    assert "" == warnings_of(lambda: model(pixel_values))  # no CAMs made: nothing to say
    assert "text embeddings are placeholders" in warnings_of(
        lambda: model(pixel_values, class_labels=class_labels)
    )
    assert "saved are placeholders" in warnings_of(lambda: model.save_pretrained(tmp_path / "a"))
    saved = WeCLIPForSemanticSegmentation.from_pretrained(tmp_path / "a")  # placeholders they stay
    assert "are placeholders" in warnings_of(lambda: saved(pixel_values, class_labels=class_labels))
    assert "saved are placeholders" in warnings_of(lambda: saved.save_pretrained(tmp_path / "b"))
    fresh = WeCLIPForSemanticSegmentation(tiny_config)
    fresh.load_state_dict(model.state_dict())
    assert "placeholders" not in warnings_of(lambda: fresh(pixel_values, class_labels=class_labels))
    model.update_class_embeddings(CharTokenizer())
    assert "placeholders" not in warnings_of(lambda: model(pixel_values, class_labels=class_labels))


def test_the_placeholder_text_embeddings_are_unit_vectors(tiny_model):
    """A model built from its config holds placeholder text embeddings until update_class_embeddings: unit
    vectors, as the computed ones, one per class and per background word."""
    embeds = (tiny_model.class_text_embeds, tiny_model.background_text_embeds)
    assert [tuple(e.shape) for e in embeds] == [(4, 16), (3, 16)]
    for e in embeds:
        torch.testing.assert_close(e.norm(dim=-1), torch.ones(len(e)))


def test_a_tokenizer_of_another_end_of_text_id_than_the_text_config_is_refused():
    """CLIP pools a prompt's text at the config's eos_token_id: a tokenizer ending its prompts with another id
    would give every prompt one embedding. A config's eos_token_id of 2 (CLIP configs of before, pooled at the
    largest id) is not compared: their tokenizers end with another id (49407)."""
    model = WeCLIPForSemanticSegmentation(make_tiny_config(text_config={**TINY_TEXT, "eos_token_id": 98}))
    with pytest.raises(
        ValueError, match=r"end-of-text id \(2\) differs from the CLIP text config's eos_token_id \(98\)"
    ):
        model.update_class_embeddings(CharTokenizer())
    model.update_class_embeddings(CharTokenizer(eos_token_id=98))
    # pooled at each prompt's end: four classes, four embeddings
    assert len(torch.unique(model.class_text_embeds, dim=0)) == 4
    legacy = WeCLIPForSemanticSegmentation(make_tiny_config())
    legacy.update_class_embeddings(CharTokenizer(eos_token_id=98))
    assert len(torch.unique(legacy.class_text_embeds, dim=0)) == 4


def test_a_classifier_of_another_class_count_than_the_config_is_refused(tiny_model):
    """The classifier's class count is checked on its own: a classifier swapped for one of 6 classes, the config's
    names and text embeddings unchanged, would give logits of classes that no label names."""
    tiny_model.decoder.classifier = torch.nn.Conv2d(tiny_model.decoder.classifier.in_channels, 7, 1)
    with pytest.raises(ValueError, match=r"The config gives 4 classes and the classifier has 6 classes"):
        tiny_model(torch.randn(1, 3, 32, 32))


SPELLED_AS_ONE = "names are compared as CLIP's tokenizer reads them"


@pytest.mark.parametrize(
    "names, message",
    [(dict(class_names=["Cat", "cat", "dog"]), rf"class_names must name each class once, got 'Cat' / 'cat' more than once \({SPELLED_AS_ONE}"),
     (dict(class_names=[" dog", "dog  "]), "class_names must name each class once, got ' dog' / 'dog  '"),
     (dict(class_names=["big cat", "big  cat"]), "class_names must name each class once, got 'big  cat' / 'big cat'"),
     (dict(class_names=["", "dog"]), r"class_names must not hold an empty name, got \['', 'dog'\]"),
     (dict(class_names=["a", "b"], label_names=["x", "x"]), r"label_names must name each label once, got 'x' more than once in the labels of ids 0..2 \['background', 'x', 'x'\]"),
     (dict(class_names=["a", "b"], label_names=["background", "x"]), "label_names must name each label once, got 'background' more than once"),
     (dict(class_names=["background", "x"]), "id2label .*must name each label once, got 'background' more than once")],
)  # fmt: skip
def test_names_that_read_as_one_are_refused_naming_them(tiny_model, names, message):
    """CLIP's tokenizer lowercases: 'Cat' and 'cat' got one text embedding, so class 2 never won a pixel; repeated
    label names lost a class from label2id (['background', 'x']: the background's); an empty class name was taken
    too. The constructor and
    update_class_embeddings (which refuses them before changing anything) name them."""
    with pytest.raises(ValueError, match=message):
        WeCLIPConfig(**names)
    before = tiny_model.config.to_dict()
    with pytest.raises(ValueError, match=message):
        tiny_model.update_class_embeddings(CharTokenizer(), **names)
    assert tiny_model.config.to_dict() == before


def test_label_names_set_on_a_built_config_that_read_as_one_are_refused(tiny_model):
    config = tiny_model.config
    before = dict(config.id2label)
    for assign, message in (
        (lambda: setattr(config, "id2label", {**RENAMED, 2: "kitten"}), "id2label must name each label once, got 'kitten'"),
        (lambda: setattr(config, "label_names", ["a", "b", "c", "background"]), "got 'background' more than once"),
        (lambda: setattr(config, "class_names", ["x", "y", "background"]), "got 'background' more than once"),
        (lambda: setattr(config, "class_names", ["x", "X"]), "class_names must name each class once, got 'X' / 'x'"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            assign()
    assert config.id2label == before and config.label2id == {n: i for i, n in before.items()}


def test_names_a_saved_model_of_before_may_hold_load_with_a_warning(tmp_path, caplog):
    """A class that is also a background word (the default VOC words hold road, sky, grass, ...) or a repeated
    background word: saved models of before hold them and their text embeddings fix the word count, so they load
    (a refusal would strand them); the config warns. Display names that differ in case are two labels (label2id's
    keys are exact; they are never tokenized)."""
    import logging

    config = make_tiny_config(
        class_names=["road", "car", "sky", "tree"], background_names=["sky", "grass", "grass"]
    )
    model = WeCLIPForSemanticSegmentation(config)
    model.update_class_embeddings(CharTokenizer())
    model.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        from transformers.utils import logging as hf_logging

        hf_logging.get_logger("weclip_hf.configuration_weclip").warning_once.cache_clear()
        loaded = WeCLIPForSemanticSegmentation.from_pretrained(tmp_path)
    assert loaded.config.background_names == ["sky", "grass", "grass"]
    assert "share ['sky']" in caplog.text and "repeats 'grass'" in caplog.text
    labels = WeCLIPConfig(class_names=["cat", "dog"], label_names=["Cat", "cat"]).id2label
    assert labels == {0: "background", 1: "Cat", 2: "cat"}


def test_a_class_list_may_hold_as_many_names_as_the_bound_and_no_more():
    from weclip_hf.config_checks import MAX_CLASSES, name_list

    names = [f"class {i}" for i in range(MAX_CLASSES + 1)]
    assert name_list("class_names", names[:-1], "class") == names[:-1]
    with pytest.raises(
        ValueError, match=f"class_names must hold at most {MAX_CLASSES} names, got {MAX_CLASSES + 1}"
    ):
        name_list("class_names", names, "class")


def test_an_ignore_index_refused_for_255_classes_is_told_to_be_minus_100():
    """With 255 classes 255 is a label id itself: the remedy names -100 (255 only below 255 classes)."""
    from weclip_hf.config_checks import check_ignore_index

    with pytest.raises(
        ValueError, match=r"label id \(0: the background, 1\.\.255: the classes\).* Use -100 "
    ):
        check_ignore_index(0, 255)
    with pytest.raises(ValueError, match=r"Use 255 "):
        check_ignore_index(0, 254)


def test_a_pathological_json_list_cell_is_refused_naming_its_row():
    """A label cell nesting 100,000 lists ended in a RecursionError; NaN or 1e999 in one were read as floats and
    refused later as "multi-hot labels of width 1". Each is now refused as no JSON list, naming the row and the
    column, the cell quoted by its start and length."""
    from weclip_hf.data.label_rows import label_value

    for cell, reason in [
        ("[" * 100_000 + "]" * 100_000, f"{'[' * 60!r}... (200000 characters), "
         "read as a JSON list but are not one (its arrays or objects nest too deep"),
        ("[NaN]", "'[NaN]', read as a JSON list but are not one (holds NaN"),
        ("[1e999]", "'[1e999]', read as a JSON list but are not one (the number 1e999 is out of the range"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=re.escape(f"Image labels (column 'labels') of row 3, {reason}")):
            label_value(cell, None, "labels", "row 3")
