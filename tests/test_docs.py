"""The documentation is self-contained and every pointer into it resolves.

(a) No project file refers to a documentation chapter except as ``docs/<chapter>.md`` (inside ``docs/`` a bare
    chapter name is relative and must exist there), and nothing points outside the repository to the team's
    background notes.
(b) Every section citation — ``docs/<chapter>.md`` followed by section numbers, a chapter name followed by
    section numbers inside ``docs/``, and bare section numbers in a file that declares which chapter they refer
    to — names an existing chapter with a heading of that number. A section number anywhere else is an error.
(c) Every relative markdown link in ``README.md`` and ``docs/*.md`` points to an existing file, and its
    ``#anchor`` (if any) to an existing heading.

The checkers are plain functions so that the last tests can feed them broken examples.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SECTION = "\u00a7"  # the section sign, spelled out so that this file holds no citation itself

#: Chapter names that used to live outside the repository; all but the last two now live in docs/.
CHAPTERS = ("methods", "evaluation", "data_formats", "architecture", "paper_tables", "statistics")
#: Paths of the old background notes, spelled in parts so that this file does not match them.
OUTSIDE = ("shared" + "/reference", "../" + "shared")

SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml"}
#: Not project files: the environment, VCS data, measured results, generated data, caches and run outputs.
PRUNED_TOP = {".venv", ".git", "results", "data", "cache", "runs", "wandb", "wandb-runs", "lightning_logs"}
PRUNED_ANY = {"__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist", ".venv"}

#: Benchmark spec descriptions are hashed into the spec's sha256, which every result records and the
#: leaderboard's provenance gate compares; a pointer inside one is therefore left as it is until those specs are
#: re-run. Exactly these files may hold one, each as often as given (none today; the test fails on any other).
SPEC_DESCRIPTION_POINTERS: dict[str, int] = {}

NUM = r"\d+(?:\.\d+)*"
# a group of section numbers after a section sign: one number, a range (10–11, 7.2–7.3), a list (4, 14) with a sign
# before every item, "x and y", or "x/y"
GROUP = (
    rf"{SECTION}{NUM}(?:\s*[–-]\s*{SECTION}?{NUM}|\s*/\s*{SECTION}?{NUM}|\s*,\s*{SECTION}{NUM}"
    rf"|\s+and\s+{SECTION}{NUM})*"
)
CHAPTER_NAME = r"(?P<name>[a-z_]+)\.md"
QUALIFIED = re.compile(rf"docs/{CHAPTER_NAME}`{{0,2}}\s*(?P<group>{GROUP})")
RELATIVE = re.compile(rf"(?<![/\w]){CHAPTER_NAME}`{{0,2}}\s*(?P<group>{GROUP})")
ANY_GROUP = re.compile(GROUP)
DECLARATION = re.compile(
    rf"Bare {SECTION} numbers in this (?:module|file) refer to `{{0,2}}docs/{CHAPTER_NAME}"
)
MENTION = re.compile(rf"(?P<prefix>docs/)?(?<![\w-])(?P<name>{'|'.join(CHAPTERS)})\.md")
HEADING_NUMBER = re.compile(rf"^#{{1,6}}\s+(?P<num>{NUM})\.?\s")
LINK = re.compile(r"!?\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")


# ------------------------------------------------------------------------------------------------ helpers
def project_files() -> Iterator[Path]:
    """Every py/md/yaml/toml file and Makefile of the project (see the pruned folders above)."""
    for folder, dirs, files in os.walk(ROOT):
        here = Path(folder)
        dirs[:] = sorted(
            d
            for d in dirs
            if d not in PRUNED_ANY and not d.endswith(".egg-info") and not (here == ROOT and d in PRUNED_TOP)
        )
        for name in sorted(files):
            path = here / name
            if path.suffix in SUFFIXES or name == "Makefile":
                yield path


def rel(path: Path) -> str:
    try:
        return path.relative_to(ROOT).as_posix()
    except ValueError:  # a file outside the project (the checkers' own tests)
        return str(path)


def without_fences(text: str) -> list[str]:
    """Lines of a markdown text outside fenced code blocks."""
    out, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def heading_numbers(text: str) -> set[str]:
    """Section numbers of a chapter's headings (``## 4. BCT`` → ``4``, ``### 10.1 …`` → ``10.1``)."""
    return {m.group("num") for line in without_fences(text) if (m := HEADING_NUMBER.match(line))}


def slug(heading: str) -> str:
    """GitHub's anchor of a heading text: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Anchors of every heading of a markdown text (repeated headings get ``-1``, ``-2``, … as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for line in without_fences(text):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def numbers_of(group: str) -> list[str]:
    """Every section number named by a group (both ends of a range)."""
    return re.findall(NUM, group)


def chapter_sections() -> dict[str, set[str]]:
    return {p.stem: heading_numbers(p.read_text(encoding="utf-8")) for p in sorted(DOCS.glob("*.md"))}


def pointer_problems(path: str, text: str, in_docs: bool, chapters: set[str]) -> list[str]:
    """(a): chapter names not written as ``docs/<chapter>.md`` (outside docs/) or not existing in docs/, and
    pointers outside the repository."""
    problems = [f"{path}: points outside the repository ({o})" for o in OUTSIDE if o in text]
    for m in MENTION.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        name = m.group("name")
        if not in_docs and m.group("prefix") is None:
            problems.append(f"{path}:{line}: '{name}.md' must be written as 'docs/{name}.md'")
        elif name not in chapters:
            problems.append(f"{path}:{line}: '{name}.md' is not a chapter of docs/")
    return problems


def citation_problems(path: str, text: str, in_docs: bool, sections: dict[str, set[str]]) -> list[str]:
    """(b): every section number must resolve (see the module docstring)."""
    problems: list[str] = []
    covered: list[tuple[int, int]] = []

    def check(name: str, group: str, start: int) -> None:
        line = text.count("\n", 0, start) + 1
        if name not in sections:
            problems.append(f"{path}:{line}: cites docs/{name}.md, which does not exist")
            return
        for num in numbers_of(group):
            if num not in sections[name]:
                problems.append(f"{path}:{line}: docs/{name}.md has no section {SECTION}{num}")

    patterns = [QUALIFIED] + ([RELATIVE] if in_docs else [])
    for pattern in patterns:
        for m in pattern.finditer(text):
            if any(a <= m.start("group") < b for a, b in covered):
                continue
            check(m.group("name"), m.group("group"), m.start())
            covered.append((m.start("group"), m.end("group")))
    declared = DECLARATION.search(text)
    default = Path(path).stem if in_docs else (declared.group("name") if declared else None)
    for m in ANY_GROUP.finditer(text):
        if any(a <= m.start() < b for a, b in covered):
            continue
        if default is None:
            line = text.count("\n", 0, m.start()) + 1
            problems.append(
                f"{path}:{line}: section number '{m.group(0)}' without a chapter: write docs/<chapter>.md before "
                f"it, or declare 'Bare {SECTION} numbers in this module refer to docs/<chapter>.md'"
            )
        else:
            check(default, m.group(0), m.start())
    return problems


def link_problems(path: Path, text: str) -> list[str]:
    """(c): relative links of a markdown file resolve to files, and anchors to headings."""
    problems = []
    for line in without_fences(text):
        for m in LINK.finditer(line):
            target = m.group("target")
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            where = f"{rel(path)}: link '{target}'"
            if not dest.exists():
                problems.append(f"{where} points to a missing file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
                problems.append(f"{where}: no heading with anchor #{anchor} in {dest.name}")
    return problems


def spec_description_pointers(text: str) -> int:
    """Chapter names inside the ``description:`` value of a benchmark spec."""
    m = re.search(r"^description:.*?(?=^\S)", text, re.M | re.S)
    return len(MENTION.findall(m.group(0))) if m else 0


# -------------------------------------------------------------------------------------------------- tests
def test_docs_exist_and_are_numbered():
    sections = chapter_sections()
    for name in ("README", "methods", "evaluation", "data_formats", "architecture", "results"):
        assert name in sections, f"docs/{name}.md is missing"
    for name in ("methods", "evaluation", "data_formats", "architecture", "results"):
        assert len(sections[name]) >= 5, f"docs/{name}.md has no numbered sections"


def test_no_pointer_outside_the_docs():
    chapters = set(chapter_sections())
    problems = []
    for path in project_files():
        text = path.read_text(encoding="utf-8")
        name = rel(path)
        if name in SPEC_DESCRIPTION_POINTERS:
            found = spec_description_pointers(text)
            assert found == SPEC_DESCRIPTION_POINTERS[name], (
                f"{name}: {found} pointers in the spec description, expected {SPEC_DESCRIPTION_POINTERS[name]}: "
                "update SPEC_DESCRIPTION_POINTERS"
            )
            text = re.sub(r"^description:.*?(?=^\S)", "", text, flags=re.M | re.S)
        problems += pointer_problems(name, text, name.startswith("docs/"), chapters)
    assert not problems, "\n".join(problems)


def test_every_section_citation_resolves():
    sections = chapter_sections()
    problems = []
    for path in project_files():
        name = rel(path)
        text = path.read_text(encoding="utf-8")
        if name in SPEC_DESCRIPTION_POINTERS:
            text = re.sub(r"^description:.*?(?=^\S)", "", text, flags=re.M | re.S)
        problems += citation_problems(name, text, name.startswith("docs/"), sections)
    assert not problems, "\n".join(problems)


def test_markdown_links_resolve():
    problems = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        problems += link_problems(path, path.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)


# -------------------------------------------------------------- the checkers do fail on broken examples
@pytest.mark.parametrize(
    ("text", "in_docs", "expected"),
    [
        ("see methods" + ".md for details", False, "must be written as"),
        ("see docs/paper_tables" + ".md", False, "not a chapter"),
        ("notes in ../" + "shared/x", False, "outside the repository"),
        ("see statistics" + ".md", True, "not a chapter"),
    ],
)
def test_pointer_checker_flags_bad_pointers(text, in_docs, expected):
    problems = pointer_problems("x.md" if in_docs else "x.py", text, in_docs, {"methods", "evaluation"})
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("text", "in_docs", "expected"),
    [
        (f"(docs/methods.md {SECTION}99.1)", False, "no section"),
        (f"(docs/methods.md {SECTION}1, {SECTION}7)", False, "no section"),
        (f"(docs/methods.md {SECTION}1–7)", False, "no section"),
        (f"(docs/nowhere.md {SECTION}1)", False, "does not exist"),
        (f"as in {SECTION}1", False, "without a chapter"),
        (
            f'"""Bare {SECTION} numbers in this module refer to ``docs/methods.md``."""\n# {SECTION}3',
            False,
            "no section",
        ),
        (f"[methods{'.md'} {SECTION}8](methods{'.md'})", True, "no section"),
        (f"see {SECTION}5 below", True, "no section"),
    ],
)
def test_citation_checker_flags_bad_citations(text, in_docs, expected):
    sections = {"methods": {"1", "2", "2.1"}, "evaluation": {"1"}}
    problems = citation_problems("docs/methods.md" if in_docs else "x.py", text, in_docs, sections)
    assert any(expected in p for p in problems), problems


def test_citation_checker_accepts_good_citations():
    sections = {"methods": {"1", "2", "2.1"}, "evaluation": {"1", "3"}}
    text = (
        f"(docs/methods.md {SECTION}1, {SECTION}2.1) and (``docs/evaluation.md`` {SECTION}1–3), "
        f"docs/methods.md {SECTION}2.1 step 4–5"
    )
    assert citation_problems("x.py", text, False, sections) == []


def test_link_checker_flags_broken_links(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## 2. Some section\n", encoding="utf-8")
    page = tmp_path / "b.md"
    text = (
        "[ok](a.md#2-some-section) [gone](missing.md) [bad anchor](a.md#3-nothing) [web](https://x.org/y)\n"
    )
    page.write_text(text, encoding="utf-8")
    problems = link_problems(page, text)
    assert len(problems) == 2, problems
    assert any("missing file" in p for p in problems) and any("#3-nothing" in p for p in problems)


def test_slug_matches_github():
    assert slug("4. The plugin contract") == "4-the-plugin-contract"
    assert slug("1. Reference board: `synth_class30to100`") == "1-reference-board-synth_class30to100"
    assert slug("5.2 P_up, P_comp and P_β") == "52-p_up-p_comp-and-p_β"
