"""The documentation's relative links: every `[text](path#anchor)` of README.md and docs/*.md names a file of the
repository and, where it names an anchor in a Markdown file, a heading of that file (GitHub's anchor rules)."""

from __future__ import annotations

import collections
import pathlib
import re

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]

# fenced code blocks and inline code spans: their brackets and hashes are code, not links or headings
FENCED_CODE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]+`")
# an inline link or image, `[text](target)` / `![alt](target)`, its target without a title
LINK = re.compile(r"\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


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
