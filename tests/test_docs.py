"""The documentation's relative links: every `[text](path#anchor)` of README.md and docs/*.md names a file of the
repository and, where it names an anchor in a Markdown file, a heading of that file (GitHub's anchor rules). And the
package's names and the repository's paths that README.md, docs/*.md, BENCHMARKS.md and the notebook mention
(`weclip_hf.model_card.make_model_card`, `weclip_hf/safe_loading/`, `examples/segmenting/`) exist: a module split
into a package or a name moved to another module leaves no page naming the old place."""

from __future__ import annotations

import collections
import importlib
import inspect
import pathlib
import re

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# the pages a user reads that name the package's modules, names and files
READ_PAGES = [*DOCS, REPO_ROOT / "BENCHMARKS.md", REPO_ROOT / "examples" / "inference.ipynb"]

# fenced code blocks and inline code spans: their brackets and hashes are code, not links or headings
FENCED_CODE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]+`")
# an inline link or image, `[text](target)` / `![alt](target)`, its target without a title
LINK = re.compile(r"\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
# a dotted name of the package (`weclip_hf.data.toy`, `weclip_hf.crf.dense_crf`), not part of a path or a longer name
DOTTED_NAME = re.compile(r"(?<![\w/.])weclip_hf(?:\.\w+)+")
# a path of the repository (`weclip_hf/crf.py`, `examples/segmenting/`, `examples/benchmark*.py`, a glob), its
# sentence's full stop left out
REPO_PATH = re.compile(r"(?<![\w./-])(?:weclip_hf|examples|tests|docs)/[\w./*-]*[\w*/]")


def prose(text: str) -> str:
    """``text`` without its fenced code blocks and inline code spans."""
    return INLINE_CODE.sub("", FENCED_CODE.sub("", text))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: its text without markup, lower case, punctuation other than ``-`` and
    ``_`` dropped, spaces as hyphens."""
    text = re.sub(r"`([^`]*)`|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or m.group(2) or "", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(markdown: pathlib.Path) -> set[str]:
    """The anchors of ``markdown``'s headings, a repeated one numbered ``-1``, ``-2``, ... as GitHub numbers it."""
    seen: collections.Counter[str] = collections.Counter()
    found = set()
    for heading in HEADING.findall(FENCED_CODE.sub("", markdown.read_text())):
        anchor = github_anchor(heading)
        found.add(f"{anchor}-{seen[anchor]}" if seen[anchor] else anchor)
        seen[anchor] += 1
    return found


def broken_links(markdown: pathlib.Path) -> list[str]:
    """The relative link targets of ``markdown`` that name no file or folder, or no heading of the Markdown file
    they point into; URLs (``https:``, ``mailto:``, ...) are not checked."""
    broken = []
    for target in LINK.findall(prose(markdown.read_text())):
        if re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):
            continue
        path, _, anchor = target.partition("#")
        destination = (markdown.parent / path).resolve() if path else markdown
        if not destination.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target} (no heading with anchor #{anchor} in {destination.name})")
    return broken


def resolves(dotted: str) -> bool:
    """Whether ``dotted`` names a module of the package or an attribute of one (a class, a function, a constant),
    a function or class by the module that defines it or a package that exports it."""
    module, attributes = dotted, []
    while True:
        try:
            target = importlib.import_module(module)
            break
        except ModuleNotFoundError as error:
            # a missing module of the package (this one or a parent) is the stale name; any other (an optional
            # dependency a module imports) is an error
            if "." not in module or not f"{module}.".startswith(f"{error.name}."):
                raise
            module, _, attribute = module.rpartition(".")
            attributes.insert(0, attribute)
    for attribute in attributes:
        if not hasattr(target, attribute):
            return False
        owner, target = target, getattr(target, attribute)
        imported = (
            inspect.isfunction(target) or inspect.isclass(target)
        ) and target.__module__ != owner.__name__
        # a function or class a plain module only imports lives elsewhere (a package's re-exports are its API)
        if inspect.ismodule(owner) and not hasattr(owner, "__path__") and imported:
            return False
    return True


def stale_references(page: pathlib.Path) -> list[str]:
    """The package's dotted names in ``page`` that name no module or attribute, and the repository paths (from the
    repository's root; globs matched) that name no file or folder, each once, in order."""
    text = page.read_text()
    stale = [f"{name} (no such name)" for name in DOTTED_NAME.findall(text) if not resolves(name)]
    stale += [f"{path} (no such path)" for path in REPO_PATH.findall(text) if not any(REPO_ROOT.glob(path))]
    return list(dict.fromkeys(stale))


@pytest.mark.parametrize("page", READ_PAGES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_named_modules_names_and_paths_exist(page):
    """Each `weclip_hf.x.y` the page names imports or is an attribute of a module that does (a function or class
    of the module that defines it or a package that exports it), and each `weclip_hf/...`, `examples/...`,
    `tests/...`, `docs/...` path exists."""
    assert stale_references(page) == []


def test_reference_checker_finds_moved_names_and_paths(tmp_path):
    """The checker itself: a name moved out of its module, a module split into others and a file that became a
    package are reported; the names and paths where they are now, a glob and a sentence's full stop are not."""
    page = tmp_path / "page.md"
    page.write_text(
        "`weclip_hf.hub.make_model_card` `weclip_hf.data.loading.training_set` `weclip_hf/script_arguments.py`\n"
        "`weclip_hf.model_card.make_model_card`, weclip_hf.data.labelled_sets.training_set and\n"
        "`weclip_hf/script_arguments/`; `examples/benchmark*.py` or examples/segmenting/naming.py. weclip_hf.crf.\n"
        "`weclip_hf.trainer.WeCLIPTrainer.evaluate`, `weclip_hf.batch_jobs.run_resumable` (re-exported)\n"
        "`weclip_hf.hub.make_model_card` again\n"
    )
    assert stale_references(page) == [
        "weclip_hf.hub.make_model_card (no such name)",
        "weclip_hf.data.loading.training_set (no such name)",
        "weclip_hf/script_arguments.py (no such path)",
    ]


@pytest.mark.parametrize("markdown", DOCS, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_relative_links_and_anchors_resolve(markdown):
    """Each relative link of the page names an existing file, and each anchor a heading of its Markdown file."""
    assert broken_links(markdown) == []


def test_link_checker_finds_a_broken_path_and_anchor(tmp_path):
    """The checker itself: a missing file and a missing anchor are reported, a valid anchor (of a heading with code,
    punctuation and a repeat) and a link inside code are not."""
    (tmp_path / "other.md").write_text(
        "# Labelling a dataset (two-stage WSSS)\n## `--msf`, flips\n## Notes\n## Notes\n"
    )
    page = tmp_path / "page.md"
    page.write_text(
        "[a](other.md#labelling-a-dataset-two-stage-wsss) [b](other.md#--msf-flips) [c](other.md#notes-1) "
        "[d](missing.md) [e](other.md#no-such-heading) `[f](also-missing.md)` [g](https://example.com/x#y)\n"
        "```\n[h](missing-in-code.md)\n```\n"
    )
    assert broken_links(page) == [
        "missing.md (no such file)",
        "other.md#no-such-heading (no heading with anchor #no-such-heading in other.md)",
    ]
