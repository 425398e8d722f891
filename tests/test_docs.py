"""The documentation stays short, linked, generated where it can be, and free of history.

- README.md has at most 350 lines: detail goes to docs/<subject>.md;
- every relative link (and #anchor) in README.md and docs/*.md points at a file (and heading)
  that exists;
- the check catalogue in docs/validation.md is what clinic_lib/validation/checks.py renders now, and the
  renderer (``python -m clinic_lib.validation.checks``, ``make docs``) rewrites only what is between its
  markers;
- no "issue N" tag and no dated history (a machine or a session named by its date or number) in the
  README, docs/, the code, the tests, the benches, the notebooks or the configuration files, and
  no timings in clinic_lib's comments (they belong in docs/benchmarks.md).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from clinic_lib.validation import checks

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
FOLDER_NOTES = [ROOT / "data" / "README.md", ROOT / "outputs" / "README.md", ROOT / "tests" / "data" / "README.md"]
MAX_README_LINES = 350

# Files a link may name before they exist (none: every link is checked).
AWAITED: set = set()


# --- reading markdown -----------------------------------------------------------------------------

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"`[^`]*`")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code removed."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, INLINE_CODE.sub("", line)))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a markdown file (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def relative_links(path: Path) -> list[tuple[int, str]]:
    """(line, target) of every link and image that is not a URL with a scheme."""
    links = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
                links.append((number, target))
    return links


def resolve(path: Path, target: str) -> tuple[Path, str | None]:
    file_part, _, anchor = target.partition("#")
    resolved = (path.parent / file_part).resolve() if file_part else path
    return resolved, anchor or None


def broken_links(files, awaited=frozenset()) -> list[str]:
    problems = []
    for path in files:
        for line, target in relative_links(path):
            resolved, anchor = resolve(path, target)
            where = f"{path.relative_to(ROOT)} line {line}: {target}"
            if resolved in awaited:
                continue
            if not resolved.exists():
                problems.append(f"{where}: no file {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved}")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{where}: no heading with the anchor #{anchor} in {resolved.name}")
    return problems


# --- the README -----------------------------------------------------------------------------------

def test_readme_stays_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines (at most {MAX_README_LINES}): move detail to docs/<subject>.md "
        "and link it")


def test_readme_links_every_docs_page():
    linked = {resolve(README, target)[0] for _, target in relative_links(README)}
    assert [p.name for p in DOCS if p not in linked] == []


# --- links ----------------------------------------------------------------------------------------

def test_the_link_checker_finds_broken_links_and_anchors(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Title\n\n## The `clinic demo` (1x)\n\n## Notes\n## Notes\n")
    page = tmp_path / "README.md"
    page.write_text(
        "See [a](docs/a.md), [heading](docs/a.md#the-clinic-demo-1x), [second](docs/a.md#notes-1),\n"
        "![img](docs/missing.png) and [gone](docs/gone.md#x), [bad anchor](docs/a.md#nope),\n"
        "[web](https://example.org/x.md), [self](#title) and `[code](docs/nowhere.md)`.\n"
        "```sh\n[in a block](docs/nowhere.md)\n# not a heading\n```\n# Title\n")
    assert broken_links([page]) == [
        "README.md line 2: docs/missing.png: no file docs/missing.png",
        "README.md line 2: docs/gone.md#x: no file docs/gone.md",
        "README.md line 2: docs/a.md#nope: no heading with the anchor #nope in a.md",
    ]


def test_every_relative_link_in_the_readme_and_docs_resolves():
    assert broken_links([README, *DOCS, *FOLDER_NOTES], awaited=AWAITED) == []


# --- the generated check catalogue -----------------------------------------------------------------

VALIDATION_DOC = ROOT / "docs" / "validation.md"


def test_the_check_catalogue_in_the_docs_is_what_checks_py_renders():
    in_docs = checks.catalogue_in(VALIDATION_DOC.read_text(encoding="utf-8"))
    assert in_docs == checks.catalogue_markdown(), (
        "docs/validation.md's check catalogue differs from clinic_lib/validation/checks.py: run `make docs`")


def test_the_catalogue_has_a_row_per_check_in_catalogue_order():
    rows = checks.catalogue_markdown().splitlines()[2:]
    assert [re.match(r"^\| `([^`]+)` \|", row).group(1) for row in rows] == list(checks.CATALOGUE)
    assert rows[0] == ("| `file.missing` | error | drop | a required file (patients, physios, "
                       "appointments, payments .csv) is not in the drop |")
    assert "| `roster.outside` | warning | drop, db |" in checks.catalogue_markdown()


def test_writing_the_catalogue_replaces_only_what_is_between_the_markers(tmp_path):
    doc = tmp_path / "validation.md"
    before = "# Checks\n\nIntro.\n\n<!-- check-catalogue:start (generated) -->\n"
    after = "<!-- check-catalogue:end -->\n\n## After\n\nText.\n"
    doc.write_text(before + "| stale | table |\n| old row |\n" + after)
    run = subprocess.run([sys.executable, "-m", "clinic_lib.validation.checks", str(doc)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "updated" in run.stdout
    assert doc.read_text() == before + checks.catalogue_markdown() + "\n" + after
    again = subprocess.run([sys.executable, "-m", "clinic_lib.validation.checks", str(doc)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert "already up to date" in again.stdout
    assert doc.read_text() == before + checks.catalogue_markdown() + "\n" + after


@pytest.mark.parametrize("text", [
    "no markers at all\n",
    "<!-- check-catalogue:end -->\n<!-- check-catalogue:start -->\n",
    "<!-- check-catalogue:start -->\n<!-- check-catalogue:start -->\n<!-- check-catalogue:end -->\n",
])
def test_a_document_without_one_pair_of_markers_is_refused_and_left_alone(tmp_path, text):
    doc = tmp_path / "validation.md"
    doc.write_text(text)
    with pytest.raises(ValueError, match="check-catalogue"):
        checks.with_catalogue(text)
    run = subprocess.run([sys.executable, "-m", "clinic_lib.validation.checks", str(doc)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "marker" in run.stderr
    assert doc.read_text() == text


def test_a_bar_in_a_meaning_does_not_break_the_table(monkeypatch):
    monkeypatch.setitem(checks.CATALOGUE, "x.bar", checks.CheckDef("x.bar", "error", ("db",), "a | b"))
    assert checks.catalogue_markdown().splitlines()[-1] == "| `x.bar` | error | db | a \\| b |"


# --- no history, no issue tags, no timings in comments ---------------------------------------------

# A work period of the project's history, spelt so that this file does not itself read as one.
PERIOD = r"se[s]sions?"
HISTORY = re.compile("|".join([
    r"\bissues?\s*#?\d+",                                              # an issue's number
    r"\bmachine of\b",                                                 # "the machine of" a day
    r"\b\d{4}-\d{2}-\d{2}'s\b",                                        # a date's work
    r"\b(?:first|second|third|fourth|fifth|sixth|this|that|earlier|previous|latest|last)"
    r"\s+" + PERIOD + r"(?:'s)?\s+(?:machine|changes?|code|measured|figures?)",  # an ordinal period's machine
    r"\b(?:first|second|third|fourth|fifth|sixth)\s+" + PERIOD + r"\b",  # an ordinal period
    r"\bmeasured\s+(?:on\s+)?\d{4}-\d{2}-\d{2}",                       # measured on a date
    r"\bbefore this\s+" + PERIOD + r"\b",
]), re.IGNORECASE)

NUMBER = r"~?\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?"  # 3, 0.06, ~45, 0.24-0.30
TIMING = re.compile("|".join([
    NUMBER + r"\s*(?:ms|s|seconds)\b[^\n]{0,20}(?:->|→|instead of)\s*" + NUMBER,  # 3.8 s -> 2.1 s
    r"\binstead of\s+" + NUMBER + r"\s*(?:ms|s)\b",                        # instead of 0.24-0.30 s
    r"\b\d+(?:\.\d+)?(?:-\d+)?x\s+(?:faster|slower)\b",                  # 3x faster
    NUMBER + r"\s*(?:->|→)\s*" + NUMBER + r"\s*(?:ms|s)\b",                # (1.9 -> 1.4 s at 20x)
    r"\b(?:took|takes?|taking|costs?)\s+" + NUMBER + r"\s*(?:ms|s)\b",     # took 110-120 ms
]), re.IGNORECASE)


def project_files() -> list[Path]:
    """The project's own text: README, docs, code, tests, benches, notebooks and configuration."""
    files = [README, *DOCS, *FOLDER_NOTES, ROOT / "run_daily.py", ROOT / "Makefile", ROOT / "pyproject.toml",
             ROOT / "environment.yml", ROOT / ".env.example", ROOT / ".ci" / "run"]
    for folder, pattern in (("clinic_lib", "**/*.py"), ("clinic_lib", "**/*.j2"), ("clinic_lib", "**/*.html"),
                            ("clinic_lib", "**/*.txt"), ("clinic_lib", "**/*.js"), ("clinic_lib", "**/*.css"),
                            ("bench", "*.py"), ("tests", "**/*.py"), ("notebooks", "*.ipynb")):
        files += sorted((ROOT / folder).glob(pattern))
    return [f for f in files if f.exists() and f != Path(__file__).resolve()]


def matches(pattern: re.Pattern, files) -> list[str]:
    found = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            m = pattern.search(line)
            if m:
                found.append(f"{path.relative_to(ROOT)}:{number}: {m.group(0)!r} in {line.strip()[:100]}")
    return found


@pytest.mark.parametrize("line", [
    "Targets (issue 2): refresh_day at 1x",
    "# --- reception: priorities / reminders / api (issue #5) ---",
    "On the machine of 2026-12-01's fourth session (2 cores)",
    "Measured 2026-11-25 on this 2-core machine",
    "on the fourth session's machine, 0.82-1.12x on earlier ones",
    "before this session's changes",
])
def test_the_history_pattern_catches_dated_history(line):
    assert HISTORY.search(line)


@pytest.mark.parametrize("line", [
    "sign-out ends the account's sessions on every computer",
    "the session's CSRF token",
    "voila-dashboards/voila#1446 reports the same",
    "the demo day 2026-11-24 with seed 7",
])
def test_the_history_pattern_leaves_ordinary_text_alone(line):
    assert not HISTORY.search(line)


@pytest.mark.parametrize("line", [
    "# appointments' 0.8M patient and physio ids, 0.06 s instead of 0.24-0.30 s",
    "statement per row (20x demo's appointments: 3.8 s -> 2.1 s).",
    "None for any other file (the 20x drop's four files: ~8 ms instead of ~45 ms).",
    "# try: the stored form: a fixed format parses 3x faster",
    "where copying those rows into a temporary table took 110-120 ms",
    "# from the covering index without a table lookup (1.9 -> 1.4 s at 20x).",
    "one anti-join each where the same checks row by row cost 3-4 s.",
])
def test_the_timing_pattern_catches_timings(line):
    assert TIMING.search(line)


@pytest.mark.parametrize("line", [
    "Every SQLite connection waits up to 30 s for a lock.",
    "--VoilaExecutor.timeout=120",
    "POLL_SLICE_SECONDS = 0.25",
])
def test_the_timing_pattern_leaves_settings_alone(line):
    assert not TIMING.search(line)


def test_no_issue_tags_or_dated_history_anywhere():
    assert matches(HISTORY, project_files()) == []


def test_no_timings_in_the_library_comments():
    library = sorted((ROOT / "clinic_lib").glob("**/*.py"))
    assert matches(TIMING, library) == []
