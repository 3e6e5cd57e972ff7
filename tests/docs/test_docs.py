"""The docs agree with the code: every ``evotok`` command they write exists with the flags they give it, every
relative link and image resolves, and the README's install extras are the Makefile's.

Commands are read from README.md, docs/**/*.md and the model cards: from fenced code blocks (not Python ones;
lines continued with a trailing backslash are joined) and from inline code. Each command's subcommand must be
one ``evotok --help`` lists (for ``evotok bench NAME``, one ``evotok bench --help`` lists), and each flag one
that the subcommand's ``--help`` lists; hidden (``argparse.SUPPRESS``) flags are not listed, so docs cannot use
them. Every ``--help`` runs once, all of them in parallel.
"""

from __future__ import annotations

import contextlib
import functools
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = sorted(
    [REPO / "README.md", *(REPO / "docs").rglob("*.md"), *(REPO / "weights").glob("*/MODEL_CARD.md")]
)
README_MAX_LINES = 150
BENCHMARKS_MAX_LINES = 300

FENCE = re.compile(r"^ {0,3}(```+|~~~+)\s*([\w+-]*)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_SRC = re.compile(r"""<(?:img|a)\b[^>]*?\b(?:src|href)\s*=\s*["']([^"']+)["']""", re.I)
SEPARATORS = re.compile(r"\s(?:&&|\|\||\||;)\s")
FLAG = re.compile(r"^--?[A-Za-z][\w-]*")
ALTERNATIVES = re.compile(r"^\{([\w-]+(?:,[\w-]+)+)\}$")
NOT_SHELL = {
    "python",
    "py",
    "python3",
    "pycon",
    "json",
    "yaml",
    "yml",
    "toml",
    "ini",
    "html",
    "js",
    "javascript",
}
LIST_GAP = re.compile(r"^[\s,:;(]*(?:(?:and|or|e\.g\.|takes|accepts|with|options?)\b[\s,:;(]*)*$")
WRAPPERS = {"quiet.sh", "nice", "time", "exec", "sudo", "env", "nohup", "timeout", "taskset"}
TOP_LEVEL_FLAGS = {"-h", "--help", "help", "-V", "--version"}


@dataclass(frozen=True)
class Command:
    """One ``evotok`` command written in a doc: where it is, and its words after ``evotok``."""

    doc: Path
    line: int
    words: tuple[str, ...]

    def where(self) -> str:
        doc = self.doc.relative_to(REPO) if self.doc.is_relative_to(REPO) else self.doc
        return f"{doc}:{self.line}: evotok {' '.join(self.words)}"


# --- reading the docs ---------------------------------------------------------------------------------------


def split_fenced(text: str) -> tuple[list[tuple[int, str, str]], str]:
    """(code-block lines as (line number, language, text)), and the prose with code blocks blanked out."""
    code: list[tuple[int, str, str]] = []
    prose: list[str] = []
    fence: str | None = None
    lang = ""
    for n, line in enumerate(text.splitlines(), start=1):
        m = FENCE.match(line)
        if fence is None and m:
            fence, lang = m.group(1), m.group(2).lower()
            prose.append("")
        elif (
            fence is not None
            and line.strip().startswith(fence[0] * len(fence))
            and not line.strip()[len(fence) :]
        ):
            fence = None
            prose.append("")
        elif fence is not None:
            code.append((n, lang, line))
            prose.append("")
        else:
            prose.append(line)
    return code, "\n".join(prose)


def joined_lines(code: list[tuple[int, str, str]]) -> Iterator[tuple[int, str]]:
    """Shell lines of the code blocks with backslash continuations joined, numbered by their first line."""
    start, parts, prev = 0, [], -1
    for n, lang, line in code:
        if lang in NOT_SHELL:
            continue
        if parts and n != prev + 1:  # a new block began while a continuation was open
            yield start, " ".join(parts)
            parts = []
        if not parts:
            start = n
        prev = n
        stripped = line.rstrip()
        if stripped.endswith("\\"):
            parts.append(stripped[:-1])
            continue
        parts.append(stripped)
        yield start, " ".join(parts)
        parts = []
    if parts:
        yield start, " ".join(parts)


def words_of(text: str) -> list[str]:
    """Shell words with comments (a ``#`` that starts a word) dropped; whitespace splitting if quotes do not pair."""
    text = re.sub(r"(^|\s)#.*$", "", text)
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def at_command_position(words: list[str]) -> Iterator[int]:
    """Indexes of the words a shell runs as a command: the first word after ``VAR=value`` assignments, after a
    wrapper (``scripts/quiet.sh``, ``nice -n 15``, ``time``, ...) with its options, or after ``--``."""
    expect = True
    for i, word in enumerate(words):
        if word == "--":
            expect = True
        elif expect and (
            re.match(r"^[A-Za-z_]\w*=", word) or word.rsplit("/", 1)[-1] in WRAPPERS or word.isdigit()
        ):
            continue  # assignments, wrappers and their numbers
        elif expect and FLAG.match(word):  # a wrapper's options
            continue
        elif expect:
            yield i
            expect = False


def evotok_commands(text: str) -> Iterator[tuple[str, ...]]:
    """The words after each ``evotok`` (``.venv/bin/evotok``, ``python -m evotok.cli``) run in a shell line."""
    for segment in SEPARATORS.split(text):
        words = words_of(segment)
        for i, word in enumerate(words):
            if word == "evotok.cli" and i > 0 and words[i - 1] == "-m":
                yield tuple(words[i + 1 :])
                break
        else:
            for i in at_command_position(words):
                if words[i].rsplit("/", 1)[-1] == "evotok":
                    yield tuple(words[i + 1 :])


def sentences(prose: str) -> Iterator[tuple[int, str]]:
    """(offset, text) of each sentence of the prose; a table row or list item ends a sentence too."""
    for m in re.finditer(r"(?:[^\n]|\n(?![ \t]*(?:\n|\||[-*] |\d+\. )))+", prose):
        start = m.start()
        for part in re.split(r"(?<=[.!?])\s+(?=[A-Z])", m.group(0)):
            yield start, part
            start += len(part) + 1


def commands_in(doc: Path) -> list[Command]:
    text = doc.read_text(encoding="utf-8")
    code, prose = split_fenced(text)
    found = []
    for n, line in joined_lines(code):
        spans = [m.group(2) for m in INLINE_CODE.finditer(line)]  # a diagram naming `evotok worker` in code
        for text in spans or [line]:
            found += [Command(doc, n, words) for words in evotok_commands(text)]
    for offset, sentence in sentences(prose):
        current: tuple[str, ...] | None = None  # the `evotok <sub>` that a list of flag spans follows
        end = 0
        for m in INLINE_CODE.finditer(sentence):
            if not LIST_GAP.match(sentence[end : m.start()]):
                current = None
            end = m.end()
            line = prose.count("\n", 0, offset + m.start()) + 1
            span = " ".join(m.group(2).split())
            commands = list(evotok_commands(span))
            found += [Command(doc, line, words) for words in commands]
            if commands:
                words = commands[-1]
                current = words[:2] if words[:1] == ("bench",) else words[:1]
            elif current and FLAG.match(span):  # "`evotok encode` takes `--depth N`, `--server URL` and ..."
                found.append(Command(doc, line, (*current, span.split()[0])))
            else:
                current = None
    return found


# --- what the CLI accepts -----------------------------------------------------------------------------------


def evotok_argv() -> list[str]:
    script = Path(sys.executable).with_name("evotok")
    return [str(script)] if script.exists() else [sys.executable, "-m", "evotok.cli"]


class HelpFailed(Exception):
    """``evotok ... --help`` did not exit 0 (the subcommand does not even start)."""


@functools.cache
def help_text(words: tuple[str, ...]) -> str:
    proc = subprocess.run(
        [*evotok_argv(), *words, "--help"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    if proc.returncode != 0:
        raise HelpFailed(
            f"`evotok {' '.join(words)} --help` exited {proc.returncode}: {proc.stderr.strip()[-600:]}"
        )
    return proc.stdout


def listed_names(help_: str) -> set[str]:
    """Command names of ``evotok --help`` / ``evotok bench --help`` (a name, two spaces, its description)."""
    return set(re.findall(r"^  ([a-z][\w-]*)\s{2,}\S", help_, re.M))


def listed_flags(help_: str) -> set[str]:
    """Flags on argparse's option lines (``  -o OUT, --out OUT   help``); hidden flags never appear there."""
    flags: set[str] = set()
    for line in help_.splitlines():
        m = re.match(r"^ {2}(-\S.*?)(?:\s{2,}|$)", line)
        if m:
            flags |= set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", m.group(1)))
    return flags


def subcommand_path(words: tuple[str, ...]) -> tuple[list[tuple[str, ...]], list[str]]:
    """(the subcommand word tuples a command names (several for ``{a,b}``), problems found on the way)."""
    if not words or words[0] in TOP_LEVEL_FLAGS or words[0].startswith("<"):
        return [], []
    sub = words[0]
    names = ALTERNATIVES.match(sub).group(1).split(",") if ALTERNATIVES.match(sub) else [sub]
    unknown = [n for n in names if n not in listed_names(help_text(()))]
    if unknown:
        return [], [f"no subcommand {'/'.join(unknown)!r} (evotok --help)"]
    paths: list[tuple[str, ...]] = []
    problems: list[str] = []
    for name in names:
        if name != "bench" or len(words) < 2 or FLAG.match(words[1]) or words[1].startswith("<"):
            paths.append((name,))
            continue
        bench = words[1]
        inner = ALTERNATIVES.match(bench).group(1).split(",") if ALTERNATIVES.match(bench) else [bench]
        for b in inner:
            if b in listed_names(help_text(("bench",))):
                paths.append(("bench", b))
            else:
                problems.append(f"no benchmark {b!r} (evotok bench --help)")
    return paths, problems


def check(cmd: Command) -> list[str]:
    paths, problems = subcommand_path(cmd.words)
    flags = [FLAG.match(w.strip("[](),")).group(0) for w in cmd.words if FLAG.match(w.strip("[](),"))]
    for path in paths:
        if len(path) == 1 and path[0] == "bench":
            continue  # `evotok bench` alone: its own usage, no flags to check
        try:
            allowed = listed_flags(help_text(path))
        except HelpFailed as exc:
            problems.append(str(exc))
            continue
        for flag in flags:
            if flag not in allowed:
                problems.append(f"`evotok {' '.join(path)}` has no flag {flag} (its --help does not list it)")
    return [f"{cmd.where()}\n    {p}" for p in problems]


ALL_COMMANDS = [c for doc in DOCS for c in commands_in(doc)]


def _help_or_failure(words: tuple[str, ...]) -> None:
    with contextlib.suppress(HelpFailed):  # reported by the commands that need it
        help_text(words)


@pytest.fixture(scope="module")
def helps() -> None:
    """Run every ``--help`` the docs need once, side by side, before the checks read them."""
    paths = {("bench", w) for w in listed_names(help_text(("bench",)))}
    paths |= {(c.words[0],) for c in ALL_COMMANDS if c.words and c.words[0] in listed_names(help_text(()))}
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(_help_or_failure, sorted(paths)))


# --- the checks ---------------------------------------------------------------------------------------------


def test_top_level_help_names_every_benchmark() -> None:
    """``evotok --help`` and ``evotok bench --help`` list the same benchmarks."""
    line = next(ln for ln in help_text(()).splitlines() if ln.strip().startswith("bench "))
    assert set(re.findall(r"[a-z]+", line.split("(", 1)[1])) == listed_names(help_text(("bench",))), line


def test_docs_write_evotok_commands() -> None:
    """The extraction sees what it must (a silent parser would make the command test pass vacuously)."""
    assert len(ALL_COMMANDS) > 50
    assert any(c.doc.name == "README.md" for c in ALL_COMMANDS)


def test_the_checker_finds_a_wrong_flag_and_a_wrong_subcommand(tmp_path: Path, helps: None) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "Run `evotok encode a.png -o c.npy --device cuda`.\n`evotok tokenize` takes `--device cuda`; `evotok decode`"
        " takes\n`--depth 4` and `--threads`.\n\n```bash\nevotok serve \\\n    --port 1 --nope 2\n"
        "evotok bench {runtime,nosuch}\nscripts/quiet.sh evotok frobnicate\n```\n"
    )
    problems = [p for c in commands_in(doc) for p in check(c)]
    text = "\n".join(problems)
    assert "no flag --device" in text and "no flag --nope" in text and "no flag --port" not in text
    assert "no flag --depth" not in text  # `evotok decode` takes --depth
    assert text.count("no flag --device") == 1 and "decode` has no flag --threads" in text
    assert "no benchmark 'nosuch'" in text and "no subcommand 'frobnicate'" in text


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_doc_commands_name_real_subcommands_and_flags(doc: Path, helps: None) -> None:
    problems = [p for c in ALL_COMMANDS if c.doc == doc for p in check(c)]
    assert not problems, "commands that the CLI does not accept:\n" + "\n".join(problems)


def heading_anchors(doc: Path) -> set[str]:
    """GitHub's anchors for a Markdown file's headings (lower case, punctuation dropped, spaces to hyphens)."""
    _, prose = split_fenced(doc.read_text(encoding="utf-8"))
    anchors: set[str] = set()
    for title in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", prose, re.M):
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").strip().lower()).replace(" ", "-")
        n, candidate = 0, slug
        while candidate in anchors:
            n += 1
            candidate = f"{slug}-{n}"
        anchors.add(candidate)
    return anchors


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_images_resolve(doc: Path) -> None:
    _, prose = split_fenced(doc.read_text(encoding="utf-8"))
    prose = INLINE_CODE.sub("", prose)
    broken = []
    for target in LINK.findall(prose) + HTML_SRC.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            continue  # http:, https:, mailto:
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / unquote(path_part)).resolve() if path_part else doc
        if not dest.exists():
            broken.append(f"{target} (no {dest})")
        elif anchor and dest.suffix == ".md" and anchor not in heading_anchors(dest):
            broken.append(f"{target} (no heading #{anchor} in {dest.relative_to(REPO)})")
    assert not broken, f"{doc.relative_to(REPO)}: broken links:\n" + "\n".join(broken)


def test_readme_extras_are_the_makefiles() -> None:
    makefile = (REPO / "Makefile").read_text()
    extras = re.search(r"^EXTRAS\s*\??=\s*(\S+)", makefile, re.M).group(1)
    readme = (REPO / "README.md").read_text()
    written = re.findall(r"`([\w-]+(?:,[\w-]+)+)`\s+extras", readme)
    assert written, "README.md names no `a,b,c` extras list"
    assert set(written) == {extras}, f"README.md extras {written} != Makefile EXTRAS {extras}"
    pyproject = (REPO / "pyproject.toml").read_text()
    section = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    defined = set(re.findall(r"^([\w-]+)\s*=", section, re.M))
    for spec in [extras, *re.findall(r"evotok-serve\[([\w,-]+)\]", readme)]:
        assert set(spec.split(",")) <= defined, f"extras {spec} not all in pyproject.toml: {sorted(defined)}"


def test_front_pages_stay_short() -> None:
    readme = (REPO / "README.md").read_text().splitlines()
    benchmarks = (REPO / "docs" / "benchmarks.md").read_text().splitlines()
    assert len(readme) <= README_MAX_LINES, f"README.md has {len(readme)} lines (at most {README_MAX_LINES})"
    assert len(benchmarks) <= BENCHMARKS_MAX_LINES, f"docs/benchmarks.md has {len(benchmarks)} lines"


def test_no_document_cites_files_outside_the_repository() -> None:
    """The project reads on its own: no code, comment, doc or test names a reference kept outside it."""
    names = [
        "evotok-reference",
        "serving-reference",
        "offline-assets",
        "toolchain-notes",
        "house-style",
        "shared/docs",
    ]
    outside = re.compile("|".join(map(re.escape, names)))
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=REPO, check=True).stdout
    hits = []
    for name in tracked.split():
        path = REPO / name
        if path.suffix not in {".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".txt"} or not path.is_file():
            continue
        if path == Path(__file__).resolve():  # the list above
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            if outside.search(line):
                hits.append(f"{name}:{n}: {line.strip()}")
    assert not hits, "citations of documents that are not in the repository:\n" + "\n".join(hits)
