"""The documentation stands on its own: every relative link in the README and docs/ resolves (the file
and its #anchor) inside the repository, every repository path written as code there exists, the
README links every page of docs/, and nothing in the project points outside the repository (a
sibling folder's files, notes that are not part of it, issue numbers of a tracker the reader cannot
see). Cheap: files only, no workflow run."""

import re
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", ROOT / "containers" / "README.md", *DOCS.glob("*.md")])
# Where outputs and downloads go (git-ignored but for results/.gitkeep): a path there in the docs
# describes a run's output, not a file of the repository.
GENERATED = {"results", "logs", "benchmarks", "resources", "mlruns", ".snakemake", ".venv"}

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
DOCS_MENTION = re.compile(r"\bdocs/([\w-]+\.md)(#[\w-]+)?")
# What a reader of this repository cannot follow: a sibling folder, notes outside the project, issues.
OUTSIDE = {
    "a path into a sibling folder": re.compile(r"\.\./shared\b"),
    "a note that is not in the repository": re.compile(r"\b(?:DESIGN|ENVIRONMENT|STYLE)\.md\b"),
    "an issue number": re.compile(r"\bissues?\s+#?\d+|\(issue\b|\bissue\s*#\d+", re.IGNORECASE),
}


def tracked_files() -> list[Path]:
    """The repository's files: git's list where there is one, else every file but outputs and caches."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        listed = ""
    if listed:
        return [ROOT / name for name in listed.split("\0") if name and (ROOT / name).is_file()]
    skip = GENERATED | {".git", ".pytest_cache", ".ruff_cache", "__pycache__"}
    return [
        path for path in ROOT.rglob("*") if path.is_file() and not skip & set(path.relative_to(ROOT).parts)
    ]


def text_of(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None  # binary (images)


def prose(markdown: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced and indented code blocks: what Markdown renders as text."""
    lines, fenced, previous_blank, in_block = [], False, True, False
    for number, line in enumerate(markdown.splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced:
            continue
        indented = line.startswith("    ") and line.strip()
        in_block = bool(indented and (previous_blank or in_block))
        previous_blank = not line.strip()
        if not in_block:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    text = re.sub(r"[^\w\- ]", "", text.replace("`", "").strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The page's heading anchors; a repeated heading gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    count: dict[str, int] = {}
    for _, line in prose(page.read_text()):
        match = HEADING.match(line)
        if match:
            base = slug(match[2])
            found.add(f"{base}-{count[base]}" if base in count else base)
            count[base] = count.get(base, 0) + 1
    return found


def source_dirs() -> set[str]:
    """Top-level folders of the repository's own files: a code span starting with one names a file."""
    parts = (path.relative_to(ROOT).parts for path in tracked_files())
    return {p[0] for p in parts if len(p) > 1} - GENERATED


def test_the_pages_exist():
    expected = {"architecture.md", "hpc-and-containers.md", "serving.md", "tracking.md", "benchmarks.md"}
    assert expected <= {page.name for page in DOCS.glob("*.md")}, sorted(DOCS.glob("*.md"))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(page):
    problems = []
    for number, line in prose(page.read_text()):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
                continue
            path_part, _, anchor = target.partition("#")
            where = f"{page.relative_to(ROOT)}:{number}: {target}"
            resolved = (page.parent / path_part).resolve() if path_part else page
            if not resolved.is_relative_to(ROOT.resolve()):
                problems.append(f"{where}: points outside the repository")
            elif not resolved.exists():
                problems.append(f"{where}: no such file")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                problems.append(f"{where}: no heading with anchor #{anchor} in {resolved.relative_to(ROOT)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_repository_path_written_as_code_exists(page):
    tops = source_dirs()
    assert {"scripts", "rules", "config", "docs"} <= tops, tops
    problems, checked = [], 0
    for number, line in prose(page.read_text()):
        for span in CODE_SPAN.findall(line):
            where = f"{page.relative_to(ROOT)}:{number}: `{span}`"
            if span.startswith("../"):
                problems.append(f"{where}: a path outside the repository")
                continue
            # a path: no spaces, placeholders (<...>, {...}), variables, options or URLs
            path = span.rstrip("/").rstrip(".,:;")
            if not re.fullmatch(r"[\w.\-*/]+", path) or "/" not in path or path.split("/")[0] not in tops:
                continue
            checked += 1
            if not (any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()):
                problems.append(f"{where}: no such file or folder in the repository")
    assert not problems, "\n".join(problems)
    if page.parent == DOCS:
        assert checked, f"{page.relative_to(ROOT)}: no repository path checked; is the pattern still right?"


def test_the_readme_links_every_page_of_docs():
    readme = (ROOT / "README.md").read_text()
    linked = {(ROOT / target.partition("#")[0]).resolve() for target in LINK.findall(readme)}
    missing = [page.name for page in DOCS.glob("*.md") if page.resolve() not in linked]
    assert not missing, f"README.md does not link docs/{', docs/'.join(missing)}"


def test_nothing_points_outside_the_repository():
    problems = []
    for path in tracked_files():
        if path == Path(__file__).resolve():
            continue
        text = text_of(path)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for what, pattern in OUTSIDE.items():
                if pattern.search(line):
                    problems.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()[:120]}")
    assert not problems, "\n".join(problems)


def test_every_mention_of_a_docs_page_names_one_that_exists():
    """Code, config and comments send readers to docs/<page>.md(#anchor): each must be there."""
    problems, seen = [], 0
    for path in tracked_files():
        text = text_of(path)
        if text is None or path == Path(__file__).resolve():
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for name, anchor in DOCS_MENTION.findall(line):
                seen += 1
                page = DOCS / name
                if not page.exists():
                    problems.append(f"{path.relative_to(ROOT)}:{number}: docs/{name} does not exist")
                elif anchor and anchor[1:] not in anchors(page):
                    problems.append(f"{path.relative_to(ROOT)}:{number}: docs/{name} has no heading {anchor}")
    assert seen, "no file mentions a docs/ page: is the pattern still right?"
    assert not problems, "\n".join(problems)


BENCH_MENTION = re.compile(r"\bbench/([\w.-]+\.(?:py|sh))\b")


def test_every_bench_file_is_in_the_benchmarks_table_and_every_mention_exists():
    """docs/benchmarks.md's table names each file of bench/ (its first column), and whatever names a
    bench/ file (code, tests, docs) names one that exists."""
    bench = {path.name for path in tracked_files() if path.parent == ROOT / "bench"}
    assert {"audit_speed.py", "serve_speed.py"} <= bench, sorted(bench)
    page = (DOCS / "benchmarks.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `bench/")]
    in_table = {name for row in rows for name in BENCH_MENTION.findall(row.split(" | ")[0])}
    assert not bench - in_table, f"bench/ files not in docs/benchmarks.md's table: {sorted(bench - in_table)}"
    assert not in_table - bench, f"docs/benchmarks.md's table names missing files: {sorted(in_table - bench)}"
    problems = []
    for path in tracked_files():
        text = text_of(path)
        if text is None or path == Path(__file__).resolve():
            continue
        for number, line in enumerate(text.splitlines(), 1):
            problems += [
                f"{path.relative_to(ROOT)}:{number}: bench/{name} does not exist"
                for name in BENCH_MENTION.findall(line)
                if name not in bench
            ]
    assert not problems, "\n".join(problems)
