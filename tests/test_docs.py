"""The documentation holds together: README.md stays a short front door, and every relative link or image in
README.md and docs/*.md points at a file of the repository, and every #anchor at a heading of its page.

Anchors follow GitHub's heading ids: the heading's text, lowercased, with punctuation removed (hyphens,
underscores and spaces kept), each space turned into a hyphen; a repeated id gets -1, -2, ... Links and
headings inside code (fenced blocks, `code spans`) are not links or headings.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
MAX_README_LINES = 200

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
INLINE_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
HTML_ATTR = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=[\"']([^\"']+)[\"']", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose_lines(text: str) -> list[str]:
    """The page's lines outside fenced code blocks, with code spans blanked out."""
    out, fenced = [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if m and (fenced is None or m.group(1) == fenced):
            fenced = m.group(1) if fenced is None else None
            continue
        if fenced is None:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's id for a heading's markdown text (before de-duplication)."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = INLINE_LINK.sub(lambda m: m.group(1), text)
    text = re.sub(r"<[^>]+>", "", text).replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading id of a page, duplicates numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    out = set()
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[str]:
    """Every link and image target of a page (inline, reference definitions, HTML a/img)."""
    out = []
    for line in _prose_lines(path.read_text(encoding="utf-8")):
        prose = CODE_SPAN.sub("", line)
        out += [m.group(2) for m in INLINE_LINK.finditer(prose)]
        out += [m.group(1) for m in HTML_ATTR.finditer(prose)]
        if m := REFERENCE_DEF.match(prose):
            out.append(m.group(1))
    return out


def _problem(page: Path, target: str, repo: Path = REPO) -> str | None:
    """Why a link of `page` is broken, or None when it resolves."""
    if not target:
        return "empty link"
    if SCHEME.match(target) or target.startswith("//"):
        return None  # another site: not checked offline
    file_part, _, anchor = target.partition("#")
    dest = (page.parent / file_part).resolve() if file_part else page
    if not dest.is_relative_to(repo):
        return f"{target}: outside the repository"
    if not dest.exists():
        return f"{target}: no such file {dest.relative_to(repo)}"
    if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
        return f"{target}: no heading #{anchor} in {dest.relative_to(repo)}"
    if anchor and dest.suffix != ".md":
        return f"{target}: an anchor into a file that is not a markdown page"
    return None


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_and_anchors_resolve(page):
    found = links(page)
    broken = [p for t in found if (p := _problem(page, t))]
    assert not broken, f"{page.relative_to(REPO)}: broken links:\n" + "\n".join(broken)


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines; move detail into docs/ (at most {MAX_README_LINES})"


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README) if not SCHEME.match(t)}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def test_slug_follows_github():
    assert slug("Explanations: why this result (Grad-CAM)") == "explanations-why-this-result-grad-cam"
    assert slug("The catalogue's triplets in FashionIQ and CIRR layouts") == (
        "the-catalogues-triplets-in-fashioniq-and-cirr-layouts")
    assert slug("Reproducing the papers with CLIP (FashionIQ, CIRR)") == (
        "reproducing-the-papers-with-clip-fashioniq-cirr")
    assert slug("`--negatives` and **bold** [a link](x.md)") == "--negatives-and-bold-a-link"
    assert slug("A -- B") == "a----b"
    assert slug("snake_case → x") == "snake_case--x"


def test_duplicate_headings_are_numbered(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# Top\n## Notes\n```\n# not a heading\n```\n## Notes\n### Notes\n")
    assert anchors(page) == {"top", "notes", "notes-1", "notes-2"}


def test_a_broken_link_is_caught(tmp_path):
    (tmp_path / "a.md").write_text("# A\n[ok](b.md#b) [bad](b.md#nope) [gone](c.md) `[code](x.md)`\n")
    (tmp_path / "b.md").write_text("# B\n")
    found = links(tmp_path / "a.md")
    assert found == ["b.md#b", "b.md#nope", "c.md"]
    problems = [_problem(tmp_path / "a.md", t, repo=tmp_path) for t in found]
    assert problems[0] is None and "no heading #nope" in problems[1] and "no such file" in problems[2]
