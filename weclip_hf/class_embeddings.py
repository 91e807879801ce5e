"""The class and background text embeddings: CLIP's text tower run once on the prompts of a config, stored as
buffers (inference never tokenizes) together with the prompts they encode, which loading and every forward
check against the config.

`ClassEmbeddingsMixin` is the part of [`WeCLIPForSemanticSegmentation`] that owns them: placeholders at
construction, `encode_text`, `update_class_embeddings` (new classes resize the classifier), the check that a
loaded folder's embeddings are its config's, and the refusal of classes changed under a built model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import logging as hf_logging

from .configuration_weclip import WeCLIPConfig, check_prompt_template, class_name_lists, text_prompts
from .decoder import init_trained_layer

logger = hf_logging.get_logger(__name__)


def placeholder_text_embeds(config: WeCLIPConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed unit vectors (seeded, independent of the global RNG) standing in for the class and background text
    embeddings until `update_class_embeddings` computes the real ones: [C, E] and [Nb, E]."""
    generator = torch.Generator().manual_seed(0)
    sizes = (config.num_foreground_classes, len(config.background_names))
    embeds = torch.randn(sum(sizes), config.projection_dim, generator=generator)
    return F.normalize(embeds, dim=-1).split(sizes)


def config_prompts(config: WeCLIPConfig) -> dict[str, list[str]]:
    """The prompts ``config``'s class names, background words and template give (`text_prompts`)."""
    return text_prompts(config.class_names, config.background_names, config.prompt_template)


def prompts_changed(encoded: dict[str, list[str]], prompts: dict[str, list[str]]) -> str:
    """What differs between the prompts the text embeddings encode and those a config gives, for messages."""
    return "; ".join(
        f"the {kind} prompts {prompts[kind]} where the text embeddings encode {encoded.get(kind)}"
        for kind in ("class", "background")
        if encoded.get(kind) != prompts[kind]
    )


def check_prompt_lengths(tokenizer, prompts: list[str], max_length: int) -> None:
    """Refuse prompts longer than the ``max_length`` tokens CLIP's text tower reads: cut there, two class names that
    differ only past it would get one embedding (the second never wins a pixel), and a cut name is not the class."""
    lengths = [len(ids) for ids in tokenizer(prompts, padding=False, truncation=False)["input_ids"]]
    too_long = [(prompt, n) for prompt, n in zip(prompts, lengths) if n > max_length]
    if too_long:
        prompt, n = too_long[0]
        raise ValueError(
            f"The prompt {prompt!r} is {n} tokens long (with its start and end tokens), and CLIP reads {max_length}: "
            f"it would be cut ({len(too_long)} prompt(s) of {len(prompts)}). Shorten that class name (or "
            "--prompt_template / prompt_template)."
        )


def _text_embeds_loaded(model: ClassEmbeddingsMixin, incompatible) -> None:
    """`load_state_dict` post-hook: text embeddings read from a state dict are no placeholders (taken as the
    config's prompts, as a saved model's)."""
    if "class_text_embeds" not in incompatible.missing_keys:
        model._text_embeds_are_placeholders = False


class ClassEmbeddingsMixin:
    """The text-embedding buffers of a WeCLIP model (``class_text_embeds`` [C, E], ``background_text_embeds``
    [Nb, E]) and what they encode. Needs ``config``, ``text_model``, ``text_projection``, ``decoder.classifier``
    and ``training_step`` on the model."""

    _from_backbones: str  # the model's constructor from pretrained backbones (named in messages)

    def _init_class_embeddings(self, config: WeCLIPConfig) -> None:
        """Register placeholder embeddings (and the load hook that takes loaded ones as computed)."""
        class_embeds, background_embeds = placeholder_text_embeds(config)
        self.register_buffer("class_text_embeds", class_embeds.clone())
        self.register_buffer("background_text_embeds", background_embeds.clone())
        # what the buffers encode (`_check_classes`): placeholders until computed or loaded
        self._encoded_prompts = config_prompts(config)
        self._text_embeds_are_placeholders = True
        # the tokenizer that computed them in memory (`update_class_embeddings`), which push_to_hub uploads; None
        # for placeholders or loaded ones (the tokenizer saved with them made them)
        self._text_embeds_tokenizer = None
        self.register_load_state_dict_post_hook(_text_embeds_loaded)

    @torch.no_grad()
    def encode_text(self, tokenizer, prompts: list[str]) -> torch.Tensor:
        """L2-normalized CLIP text embeddings of ``prompts``: [len(prompts), projection_dim]."""
        if not callable(tokenizer):
            raise TypeError(
                f"tokenizer must be a tokenizer object, got the {type(tokenizer).__name__} {tokenizer!r}: load the "
                "tokenizer of the CLIP the model was built from, AutoTokenizer.from_pretrained(...) of a folder the "
                "converter wrote or of the CLIP checkpoint (the official models': openai/clip-vit-base-patch16)."
            )
        eos = self.config.text_config.eos_token_id
        if eos != 2 and getattr(tokenizer, "eos_token_id", eos) != eos:  # 2: CLIP's legacy argmax pooling
            raise ValueError(
                f"The tokenizer's end-of-text id ({tokenizer.eos_token_id}) differs from the CLIP text config's "
                f"eos_token_id ({eos}): CLIP pools the text at that token, so every prompt would get the same "
                "embedding. Use the tokenizer saved with this CLIP checkpoint."
            )
        device = self.text_projection.weight.device
        max_length = self.config.text_config.max_position_embeddings
        check_prompt_lengths(tokenizer, prompts, max_length)
        batch = tokenizer(
            prompts, padding="max_length", truncation=True, return_tensors="pt", max_length=max_length
        )
        out = self.text_model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        )
        return F.normalize(self.text_projection(out.pooler_output), dim=-1)

    @torch.no_grad()
    def update_class_embeddings(
        self,
        tokenizer,
        class_names: list[str] | None = None,
        background_names: list[str] | None = None,
        label_names: list[str] | None = None,
        prompt_template: str | None = None,
    ) -> None:
        """(Re)compute the class and background text embeddings, e.g. for new class names.

        New ``class_names`` also become the display names (``config.id2label``) unless ``label_names`` are given
        (VOC's prompt names: VOC's label names, as the config's constructor gives them). A different number of
        classes re-initializes the decoder's classifier (it must be trained again). ``push_to_hub`` uploads
        ``tokenizer`` with the model: a repository's tokenizer is the one of its embeddings.
        """
        cfg = self.config
        template = prompt_template or cfg.prompt_template
        check_prompt_template(template)
        renamed = class_names is not None or label_names is not None
        classes, backgrounds, labels = class_name_lists(  # checked as the config checks them
            cfg.class_names if class_names is None else class_names,  # [] is refused, not the old names kept
            label_names,
            cfg.background_names if background_names is None else background_names,
            None,
        )
        prompts = text_prompts(classes, backgrounds, template)
        fg = self.encode_text(tokenizer, prompts["class"])
        bg = self.encode_text(tokenizer, prompts["background"])
        # (the config may say so already)
        new_count = len(classes) + 1 != self.decoder.classifier.out_channels
        if not new_count and classes != cfg.class_names and int(self.training_step) > 0:
            logger.warning(
                f"update_class_embeddings: the classes {cfg.class_names} become {classes}, but the decoder was "
                f"trained ({int(self.training_step)} steps) for the old ones and keeps its classifier: train it "
                "again before reading its predictions under the new names."
            )
        cfg.class_names = classes
        if renamed:
            cfg.label_names = labels[1:]
        if new_count:
            old = self.decoder.classifier
            classifier = nn.Conv2d(old.in_channels, cfg.num_labels, 1)
            init_trained_layer(classifier, cfg.initializer_range)
            self.decoder.classifier = classifier.to(old.weight)  # its device and dtype
        cfg.background_names, cfg.prompt_template = backgrounds, template
        self.class_text_embeds = fg.to(self.class_text_embeds.dtype)
        self.background_text_embeds = bg.to(self.background_text_embeds.dtype)
        self._encoded_prompts, self._text_embeds_are_placeholders = prompts, False
        self._text_embeds_tokenizer = tokenizer
        cfg.encoded_prompts = prompts

    def _record_encoded_prompts(self) -> None:
        """Before saving: record in the config the prompts the embeddings encode (``{}`` for placeholders, with
        a warning), which loading checks (`_took_stored_text_embeds`)."""
        if self._text_embeds_are_placeholders:
            logger.warning(
                f"{type(self).__name__}.save_pretrained: the text embeddings saved are placeholders (random unit "
                "vectors, never computed): call model.update_class_embeddings(tokenizer) first."
            )
        self.config.encoded_prompts = {} if self._text_embeds_are_placeholders else self._encoded_prompts

    def _took_stored_text_embeds(self, path: str) -> None:
        """Take the loaded text embeddings as the prompts of the config: those its ``encoded_prompts`` records
        (refused when its names no longer give them: config.json edited by hand), else (a config of before) those
        its names give; ``{}`` records placeholders (saved before they were ever computed), which stay so."""
        config = self.config
        prompts = config_prompts(config)
        recorded = config.encoded_prompts
        if recorded == {}:
            return
        if recorded is not None and recorded != prompts:
            raise ValueError(
                f"The config of {path!r} gives {prompts_changed(recorded, prompts)} (its class_names, "
                "background_names or prompt_template edited in config.json?). Restore them; to change the classes, "
                "load the model and call model.update_class_embeddings(tokenizer, class_names=[...]) (id2label "
                "renames the labels only)."
            )
        self._encoded_prompts, self._text_embeds_are_placeholders = prompts, False
        config.encoded_prompts = prompts

    def _check_classes(self, weak_labels: bool = False) -> None:
        """Refuse a config whose classes, background words or prompt template were changed under the built model
        (``model.config.class_names = ...``): its text embeddings and classifier are still for the old ones. With
        ``weak_labels`` (CAMs to be made), warn once when the text embeddings are still placeholders."""
        config, encoded = self.config, self._encoded_prompts
        prompts = config_prompts(config)
        names, classes = list(config.class_names), self.decoder.classifier.out_channels - 1
        if prompts != encoded or self.class_text_embeds.shape[0] != len(names) or classes != len(names):
            raise ValueError(
                f"The config gives {prompts_changed(encoded, prompts) or f'{len(names)} classes'} and the "
                f"classifier has {classes} classes: its class_names, background_names or prompt_template were changed "
                "under the built model. Change a built model's classes with model.update_class_embeddings("
                "tokenizer, class_names=[...], background_names=..., prompt_template=...), which also encodes their "
                "prompts and resizes the classifier."
            )
        if weak_labels and self._text_embeds_are_placeholders:
            logger.warning_once(
                f"{type(self).__name__}: the class and background text embeddings are placeholders (random unit "
                "vectors): the model was built from its config and they were neither computed nor loaded, so its "
                "CAMs and pseudo labels mean nothing. Call model.update_class_embeddings(tokenizer) (or build the "
                f"model with {type(self).__name__}.{self._from_backbones}(...), or load a saved one)."
            )
