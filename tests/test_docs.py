"""Every relative link in README.md and docs/*.md points at a file that exists and, where
it names a #fragment, at a heading of that file."""

import glob
import os
import re
import unicodedata
import urllib.parse

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FENCE = re.compile(r"^\s{0,3}(```|~~~)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target); the text may hold one level of brackets.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+[\"'(][^)]*)?\)")
CODE_SPAN = re.compile(r"(`+).*?\1")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def slug(heading):
    """The anchor GitHub gives a heading: lower case, spaces to hyphens, every character
    that is not a letter, a digit, a hyphen or an underscore dropped (≥, ×, — included)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    out = []
    for ch in text.strip().lower():
        if ch == " ":
            out.append("-")
        elif ch in "-_" or unicodedata.category(ch)[0] in "LNM":
            out.append(ch)
    return "".join(out)


def _lines_outside_code(path):
    """(line number, line) of a markdown file, without its fenced code blocks."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    fence = None
    for number, line in enumerate(lines, 1):
        match = FENCE.match(line)
        if match:
            if fence is None:
                fence = match.group(1)
            elif match.group(1) == fence:
                fence = None
            continue
        if fence is None:
            yield number, line


def anchors(path):
    """Every heading anchor of a markdown file; a repeated slug gets -1, -2, ... as on GitHub."""
    seen = {}
    result = set()
    for _, line in _lines_outside_code(path):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(path):
    """(line number, target) of every link outside code blocks and code spans."""
    for number, line in _lines_outside_code(path):
        for match in LINK.finditer(CODE_SPAN.sub("", line)):
            yield number, match.group(1).strip("<>")


def markdown_files():
    return [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def broken_links():
    broken = []
    for source in markdown_files():
        for number, target in links(source):
            if not target or EXTERNAL.match(target):
                continue
            file_part, _, fragment = target.partition("#")
            file_part = urllib.parse.unquote(file_part)
            fragment = urllib.parse.unquote(fragment)
            where = f"{os.path.relpath(source, ROOT)}:{number}: ({target})"
            resolved = source
            if file_part:
                resolved = os.path.normpath(os.path.join(os.path.dirname(source), file_part))
            name = os.path.relpath(resolved, ROOT)
            if not os.path.exists(resolved):
                broken.append(f"{where}: no file {name}")
                continue
            # Fragments are checked in markdown files; elsewhere they are line anchors (#L10).
            if fragment and resolved.endswith(".md") and fragment not in anchors(resolved):
                broken.append(f"{where}: no heading with anchor #{fragment} in {name}")
    return broken


def test_slug_matches_github():
    assert (
        slug("Teacher prediction store (`kd_regression.teacher_store`)")
        == "teacher-prediction-store-kd_regressionteacher_store"
    )
    assert (
        slug("Two commands (fresh machine, CPU, nothing to download)")
        == "two-commands-fresh-machine-cpu-nothing-to-download"
    )
    assert slug("Python ≥ 3.11 — 2 × faster") == "python--311--2--faster"
    assert slug("Bad input: what was tried, and what happens") == (
        "bad-input-what-was-tried-and-what-happens"
    )


def test_links_and_anchors_are_found_outside_code_only(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n## Part\n\n## Part\n\n[a](#part-1) `[b](#code-span)` [c](https://example.com)\n"
        "```\n# not a heading\n[d](#code-block)\n```\n",
        encoding="utf-8",
    )
    assert anchors(str(page)) == {"title", "part", "part-1"}
    assert [target for _, target in links(str(page))] == ["#part-1", "https://example.com"]


def test_every_relative_link_resolves():
    broken = broken_links()
    if broken:
        pytest.fail("broken links in the documentation:\n" + "\n".join(broken), pytrace=False)
