"""The docs test (issue 27; the convention is in docs/TESTING.md, "The docs test"): what the
documentation shows is checked against the code, in both tiers.

- Every fenced block of README.md and docs/*.md marked ``<!-- docs-test: run ... -->`` or
  ``<!-- docs-test: session ... -->`` is one pytest item (``test_doc_block[FILE-N-LLINE]``: the
  file, the block's index among its marked blocks, the line of its fence). ``run`` blocks run in
  order in one fresh folder per file (``fresh`` starts another), ``python`` blocks in this
  interpreter, ``sh`` blocks with ``bash -e``; a ``session`` block runs each ``$ `` command with
  ``bash -o pipefail`` in a fresh folder and checks its exit status and the lines the doc shows.
  ``moeckpt`` on PATH is $MOECKPT_CLI (default build/moeckpt).
- docs/CLI.md is what tools/gen_cli_reference.py renders from this build's ``--help``.
- The README's CLI synopsis names exactly the options and values each command's ``--help`` lists.
- docs/PYTHON_API.md names every name of ``moeckpt.__all__``; every signature written in the docs
  matches ``inspect.signature`` (parameter names, order, kinds, defaults); the NamedTuple fields
  and the error table match the classes.

Everything runs on the tiny preset; the whole file takes a few seconds of CPU (the Automodel blocks
add Automodel's import where it is installed).
"""
from __future__ import annotations

import ast
import builtins
import contextlib
import dataclasses
import difflib
import importlib.util
import inspect
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tokenize
import traceback
from pathlib import Path

import pytest
import torch

import moeckpt

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(os.environ.get("MOECKPT_CLI", ROOT / "build" / "moeckpt"))
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PYTHON_API = ROOT / "docs" / "PYTHON_API.md"
COMMAND_TIMEOUT = 300

# ---------------------------------------------------------------------------------------------
# Collecting the marked blocks

MARKER = re.compile(r"^<!--\s*docs-test:(.*?)-->\s*$")
FENCE = re.compile(r"^(```+)\s*([\w+-]*)\s*$")
PLACEHOLDER = "\u2026"  # "…": any text within one line


@dataclasses.dataclass
class Block:
    path: Path
    index: int  # among the file's marked blocks
    line: int  # of the opening fence, 1-based
    mode: str = ""  # run | session
    lang: str = ""
    body: str = ""
    fresh: bool = False
    needs: tuple[str, ...] = ()
    subs: tuple[tuple[str, str], ...] = ()
    group: int = 0  # run blocks of one group share a folder
    error: str = ""  # a malformed marker

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()

    @property
    def where(self) -> str:
        return f"{self.rel}:{self.line}"

    @property
    def id(self) -> str:
        return f"{self.rel}-{self.index}-L{self.line}"


def _parse_marker(block: Block, text: str) -> None:
    try:
        words = shlex.split(text)
    except ValueError as e:
        block.error = f"unreadable marker options {text!r}: {e}"
        return
    if not words or words[0] not in ("run", "session"):
        block.error = f"a docs-test marker starts with run or session, not {text.strip()!r}"
        return
    block.mode = words[0]
    for w in words[1:]:
        if w == "fresh" and block.mode == "run":
            block.fresh = True
        elif w.startswith("needs="):
            block.needs += tuple(n for n in w[len("needs="):].split(",") if n)
        elif w.startswith("sub=") and "=>" in w:
            old, new = w[len("sub="):].split("=>", 1)
            block.subs += ((old, new),)
        else:
            block.error = f"unknown docs-test option {w!r} (fresh, needs=..., sub=OLD=>NEW)"


def collect_blocks(path: Path) -> list[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    group = 0
    i = 0
    while i < len(lines):
        m = MARKER.match(lines[i])
        if not m:
            i += 1
            continue
        block = Block(path, len(blocks), i + 2)
        _parse_marker(block, m.group(1))
        fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if not fence:
            block.error = block.error or "a docs-test marker must stand on the line before a fence"
            blocks.append(block)
            i += 1
            continue
        end = i + 2
        while end < len(lines) and lines[end].strip() != fence.group(1):
            end += 1
        if end == len(lines):
            block.error = block.error or "the fenced block is not closed"
        block.lang = fence.group(2).lower()
        block.body = "\n".join(lines[i + 2:end]) + "\n"
        if block.fresh:
            group += 1
        block.group = group
        if block.mode == "session" and block.lang not in ("", "text", "console"):
            block.error = block.error or f"a session block is a transcript, not {block.lang!r}"
        if block.mode == "run" and block.lang not in ("python", "sh", "bash"):
            block.error = block.error or f"a run block is python, sh or bash, not {block.lang!r}"
        blocks.append(block)
        i = end + 1
    return blocks


BLOCKS = [b for p in DOC_FILES for b in collect_blocks(p)]

# ---------------------------------------------------------------------------------------------
# The environment of the examples


@pytest.fixture(scope="session")
def docs_bin(tmp_path_factory) -> Path:
    """A folder for PATH holding `moeckpt` (a link to the CLI under test, so argv[0] reads as a
    user's) and `python` (this interpreter)."""
    if not CLI.exists():
        pytest.fail(f"{CLI} does not exist: build it (scripts/build.sh release) or set MOECKPT_CLI")
    d = tmp_path_factory.mktemp("docs-bin")
    (d / "moeckpt").symlink_to(CLI.resolve())
    (d / "python").symlink_to(sys.executable)
    return d


def _env(docs_bin: Path) -> dict[str, str]:
    env = dict(os.environ)
    # The interpreter's own folder too, for its launchers (torchrun) where a venv is not activated.
    env["PATH"] = os.pathsep.join([str(docs_bin), str(Path(sys.executable).parent), env.get("PATH", "")])
    pkg = Path(moeckpt.__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(pkg), env.get("PYTHONPATH", "")] if p)
    return env


def missing_need(need: str, env: dict[str, str]) -> str | None:
    """Why a `needs=` requirement is not met here, or None."""
    if need == "gpu":
        return None if torch.cuda.is_available() else "needs a CUDA GPU"
    if need.startswith("cmd:"):
        prog = need[len("cmd:"):]
        return None if shutil.which(prog, path=env["PATH"]) else f"needs the command {prog} on PATH"
    try:
        found = importlib.util.find_spec(need) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"needs the Python module {need}"


def _new_folder(tmp_path_factory, name: str) -> Path:
    d = tmp_path_factory.mktemp(name)
    (d / "tests").symlink_to(ROOT / "tests")
    return d


def _substitute(text: str, block: Block) -> str:
    for old, new in block.subs:
        text = text.replace(old, new)
    return text


# ---------------------------------------------------------------------------------------------
# Shown output


def _line_matches(shown: str, real: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in shown.split(PLACEHOLDER))
    return re.fullmatch(pattern, real) is not None


def check_lines(shown: list[str], streams: list[list[str]], complete: bool) -> list[str]:
    """Every shown line (`...` alone stands for lines left out) must match a line of one of the
    streams, in order within each stream; with `complete`, no stream may print a line the doc does
    not show. Returns the problems."""
    problems = []
    pos = [0] * len(streams)
    used = [set() for _ in streams]
    for s in shown:
        if s.strip() == "...":
            continue
        for k, lines in enumerate(streams):
            hit = next((j for j in range(pos[k], len(lines)) if _line_matches(s, lines[j])), None)
            if hit is not None:
                pos[k] = hit + 1
                used[k].add(hit)
                break
        else:
            problems.append(f"shown but not printed (in this order): {s!r}")
    if complete:
        for k, lines in enumerate(streams):
            problems += [f"printed but not shown (a line `...` allows it): {lines[j]!r}"
                         for j in range(len(lines)) if j not in used[k]]
    return problems


def _split(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines()]


OUTPUT_PROSE = ("  ", " (", ": ", ", ")


def python_shown_output(body: str) -> list[tuple[int, str]]:
    """The output a python block shows: for each print(...) call, the comment lines standing
    directly below it or, when there are none, the comment on its last line. Prose may follow the
    output after two spaces, " (", ": " or ", "."""
    tree = ast.parse(body)
    ends = sorted({n.end_lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
                   and isinstance(n.func, ast.Name) and n.func.id == "print"})
    comments, alone = {}, set()
    text_lines = body.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(body).readline):
        if tok.type == tokenize.COMMENT:
            row = tok.start[0]
            comments[row] = tok.string[1:].strip()
            if not text_lines[row - 1][:tok.start[1]].strip():
                alone.add(row)
    shown = []
    for end in ends:
        below = []
        row = end + 1
        while row in alone:
            below.append((row, comments[row]))
            row += 1
        if below:
            shown += below
        elif end in comments and end not in alone:
            shown.append((end, comments[end]))
    return shown


def _python_output_matches(shown: str, real: str) -> bool:
    if _line_matches(shown, real):
        return True
    return any(shown[k:].startswith(sep) and _line_matches(shown[:k], real)
               for k in range(1, len(shown)) for sep in OUTPUT_PROSE)


# ---------------------------------------------------------------------------------------------
# Running blocks


class BlockFailed(Exception):
    pass


def run_python(block: Block, folder: Path) -> None:
    # Padded so that tracebacks name the Markdown file's own lines.
    code = compile("\n" * block.line + block.body, str(block.path), "exec")
    out = io.StringIO()
    cwd, env = os.getcwd(), dict(os.environ)
    try:
        os.chdir(folder)
        with contextlib.redirect_stdout(out):
            exec(code, {"__name__": "__main__"})
    except KeyboardInterrupt:
        raise
    except BaseException as e:  # noqa: BLE001 (a block's SystemExit too)
        if isinstance(e, SystemExit) and e.code in (None, 0):
            pass
        else:
            raise BlockFailed(f"{block.where}: the python block raised\n{traceback.format_exc()}\n"
                              f"--- printed\n{out.getvalue()[-3000:]}") from None
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
    printed = _split(out.getvalue())
    pos, problems = 0, []
    for row, shown in python_shown_output(block.body):
        hit = next((j for j in range(pos, len(printed)) if _python_output_matches(shown, printed[j])), None)
        if hit is None:
            problems.append(f"line {block.line + row}: shows {shown!r}, not printed (in this order)")
        else:
            pos = hit + 1
    if problems:
        raise BlockFailed(f"{block.where}: the python block's output differs from the doc:\n  "
                          + "\n  ".join(problems) + "\n--- printed\n" + "\n".join(printed)[-3000:])


def run_shell(block: Block, folder: Path, env: dict[str, str]) -> None:
    r = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", _substitute(block.body, block)],
                       cwd=folder, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if r.returncode != 0:
        raise BlockFailed(f"{block.where}: the sh block exited {r.returncode}\n--- stdout\n"
                          f"{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}")


def session_commands(body: str) -> list[tuple[int, str, list[str]]]:
    """(line offset, command, shown output lines) of each `$ ` line of a transcript."""
    out: list[tuple[int, str, list[str]]] = []
    for k, line in enumerate(body.splitlines()):
        if line.startswith("$ "):
            out.append((k, line[2:], []))
        elif out:
            out[-1][2].append(line.rstrip())
        elif line.strip():
            raise BlockFailed(f"a session block starts with a `$ ` command, not {line!r}")
    return out


EXIT_COMMENT = re.compile(r"\s#\s*exit (\d+)\s*$")


def expected_status(command: str, shown: list[str]) -> int:
    m = EXIT_COMMENT.search(command)
    if m:
        return int(m.group(1))
    return 1 if any(s.startswith("moeckpt: error:") for s in shown) else 0


def run_session(block: Block, folder: Path, env: dict[str, str]) -> None:
    for offset, command, shown in session_commands(block.body):
        where = f"{block.rel}:{block.line + 1 + offset}"
        expected = expected_status(command, shown)
        r = subprocess.run(["bash", "-o", "pipefail", "-c", _substitute(command, block)], cwd=folder,
                           env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
        report = f"--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
        if r.returncode != expected:
            raise BlockFailed(f"{where}: `$ {command}` exited {r.returncode}, expected {expected}\n{report}")
        if block.subs:
            continue  # run at substituted sizes: the doc shows the documented sizes' output
        complete = not any(s.strip() == "..." for s in shown)
        problems = check_lines(shown, [_split(r.stdout), _split(r.stderr)], complete)
        if problems:
            raise BlockFailed(f"{where}: `$ {command}`: the output differs from the doc:\n  "
                              + "\n  ".join(problems) + "\n" + report)


class FileRun:
    """The run blocks of one file in this process: their folders and outcomes."""

    def __init__(self):
        self.folders: dict[int, Path] = {}
        self.outcome: dict[int, str | None] = {}  # block index -> failure text, None when it passed


_runs: dict[str, FileRun] = {}


def _execute_recorded(block, state, env, tmp_path_factory) -> None:
    """_execute, its outcome kept in state.outcome (None, or the failure's message)."""
    try:
        _execute(block, state, env, tmp_path_factory)
        state.outcome[block.index] = None
    except BlockFailed as e:
        state.outcome[block.index] = str(e)


def _execute(block: Block, state: FileRun, env: dict[str, str], tmp_path_factory) -> None:
    if block.mode == "session":
        folder = _new_folder(tmp_path_factory, f"docs-{block.path.stem}-{block.index}")
        run_session(block, folder, env)
        return
    if block.group not in state.folders:
        state.folders[block.group] = _new_folder(tmp_path_factory, f"docs-{block.path.stem}-g{block.group}")
    folder = state.folders[block.group]
    if block.lang == "python":
        run_python(block, folder)
    else:
        run_shell(block, folder, env)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_doc_block(block: Block, docs_bin, tmp_path_factory):
    if block.error:
        pytest.fail(f"{block.where}: {block.error}", pytrace=False)
    env = _env(docs_bin)
    for need in block.needs:
        why = missing_need(need, env)
        if why:
            pytest.skip(f"{block.where}: {why}")
    state = _runs.setdefault(block.rel, FileRun())
    if block.mode == "run":
        # The earlier run blocks of its folder first, when this process has not run them (a block
        # selected alone, or items spread over xdist workers).
        for earlier in BLOCKS:
            # Blocks with needs= are left out: the ones after them must run where they are skipped.
            if (earlier.path != block.path or earlier.index >= block.index or earlier.mode != "run"
                    or earlier.group != block.group or earlier.error or earlier.needs):
                continue
            if earlier.index not in state.outcome:
                _execute_recorded(earlier, state, env, tmp_path_factory)
            if state.outcome[earlier.index] is not None:
                pytest.fail(f"{block.where}: not run: the earlier block {earlier.where} of its folder "
                            f"failed:\n{state.outcome[earlier.index]}", pytrace=False)
        if block.index in state.outcome:
            if state.outcome[block.index] is not None:
                pytest.fail(state.outcome[block.index], pytrace=False)
            return
    _execute_recorded(block, state, env, tmp_path_factory)
    if state.outcome[block.index] is not None:
        pytest.fail(state.outcome[block.index], pytrace=False)


def test_marked_blocks_exist():
    """The collection itself: a marker the pattern misses would silently test nothing."""
    for path in DOC_FILES:
        for k, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
            if line.lstrip().startswith("<!--") and "docs-test" in line:
                assert MARKER.match(line), f"{path.name}:{k + 1}: not a docs-test marker: {line!r}"
    assert len([b for b in BLOCKS if b.mode == "session"]) >= 2
    assert len([b for b in BLOCKS if b.mode == "run"]) >= 8


def test_placeholder_and_output_rules():
    assert _line_matches("in \u2026 s (read 0.031 GB)", "in 0.07 s (read 0.031 GB)")
    assert not _line_matches("in \u2026 s (read 0.031 GB)", "in 0.07 s (read 0.032 GB)")
    assert not _line_matches("86 tensors", "86 tensors, 1 shard")
    assert check_lines(["a", "...", "c"], [["a", "b", "c"], []], complete=False) == []
    assert check_lines(["a", "c"], [["a", "b", "c"], []], complete=True) != []
    assert check_lines(["c", "a"], [["a", "c"], []], complete=False) != []
    assert check_lines(["x", "moeckpt: error: y"], [["x"], ["moeckpt: error: y"]], complete=True) == []
    assert _python_output_matches("260: Automodel also casts", "260")
    assert _python_output_matches("torch.Size([8, 2]), as published", "torch.Size([8, 2])")
    assert not _python_output_matches("16 model.layers", "16")
    shown = python_shown_output('print(1)  # prose\n# 1\n\nprint(2)   # 2 (two)\nx = 3  # not output\n')
    assert shown == [(2, "1"), (4, "2 (two)")]
    assert expected_status("moeckpt verify a b", ["moeckpt: error: differ"]) == 1
    assert expected_status("moeckpt plan x --workers 0  # exit 2", []) == 2


# ---------------------------------------------------------------------------------------------
# The CLI reference and the README's synopsis


def _gen_cli():
    spec = importlib.util.spec_from_file_location("gen_cli_reference", ROOT / "tools" / "gen_cli_reference.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_reference_is_generated_from_help():
    expected = _gen_cli().render(CLI)
    committed = (ROOT / "docs" / "CLI.md").read_text(encoding="utf-8")
    if committed != expected:
        diff = "".join(difflib.unified_diff(committed.splitlines(True), expected.splitlines(True),
                                            "docs/CLI.md (committed)", f"{CLI} --help", n=1))
        pytest.fail("docs/CLI.md differs from what the build's --help gives: run "
                    "`python3 tools/gen_cli_reference.py` (MOECKPT_CLI or --moeckpt names the CLI) and "
                    f"commit the result\n{diff[:6000]}", pytrace=False)


def _help_options(text: str) -> dict[str, set[str] | None]:
    """Option -> its choices ({a,b} or `INT ... or "all"`), None when it takes no fixed set."""
    opts: dict[str, set[str] | None] = {}
    for line in text.splitlines():
        m = re.match(r"^  (?:-\w,)?(--[a-z0-9-]+)(?:\s+(\S+))?", line)
        if not m or m.group(1) == "--help":
            continue
        kind = m.group(2) or ""
        choices = re.search(r"\{([^}]*)\}", kind)
        opts[m.group(1)] = set(choices.group(1).split(",")) if choices else None
    return opts


def _readme_synopsis() -> tuple[dict[str, str], dict[str, str]]:
    """The README's "The CLI" block: each command's synopsis text, and its placeholder lines."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The CLI", 1)[1]
    block = section.split("```", 2)[1]
    commands: dict[str, str] = {}
    names: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        m = re.match(r"^moeckpt (\S+)\s+(.*)$", line)
        n = re.match(r"^([A-Z][A-Z ]*[A-Z])\s{2,}(.*)$", line)
        if m:
            current = ("cmd", m.group(1))
            commands[m.group(1)] = m.group(2)
        elif n:
            current = ("name", n.group(1))
            names[n.group(1)] = n.group(2)
        elif line.strip() and current:
            target = commands if current[0] == "cmd" else names
            target[current[1]] += " " + line.strip()
    return commands, names


def test_readme_synopsis_matches_help():
    gen = _gen_cli()
    top = gen.help_text(CLI)
    commands, names = _readme_synopsis()
    listed = [name for name, _ in gen.subcommands(top)]
    assert sorted(commands) == sorted(listed), "README's \"The CLI\" block and `moeckpt --help` list " \
        "different commands"
    placeholder_values = {k: {v.strip() for v in re.split(r"\|", re.sub(r"\(.*?\)", "", text))}
                          for k, text in names.items() if k != "CONVERSION OPTIONS"}
    problems = []
    for command, synopsis in commands.items():
        text = synopsis.replace("[CONVERSION OPTIONS]", names.get("CONVERSION OPTIONS", ""))
        help_opts = _help_options(gen.help_text(CLI, command))
        doc_opts = {}
        for m in re.finditer(r"(--[a-z0-9-]+)(?:\s+([^\s\]]+))?", text):
            doc_opts[m.group(1)] = m.group(2) or ""
        for opt in sorted(set(help_opts) - set(doc_opts)):
            problems.append(f"{command}: {opt} is in --help, not in the README synopsis")
        for opt in sorted(set(doc_opts) - set(help_opts)):
            problems.append(f"{command}: {opt} is in the README synopsis, not in --help")
        for opt, arg in doc_opts.items():
            choices = help_opts.get(opt)
            if not choices or opt not in help_opts:
                continue
            if arg in placeholder_values:
                values = placeholder_values[arg]
            elif "|" in arg:
                values = set(arg.split("|"))
            else:
                continue
            if values != choices:
                problems.append(f"{command} {opt}: the README gives {sorted(values)}, --help "
                                f"{sorted(choices)}")
    assert not problems, "README.md \"The CLI\" disagrees with --help:\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------------------------------------
# The Python API reference


def _strip_fences(text: str) -> str:
    """The text with fenced blocks blanked (line numbers kept)."""
    return re.sub(r"^```.*?^```", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S | re.M)


def _balanced_call(text: str, start: int) -> int | None:
    """The index just past the parenthesis that closes the one at `start`."""
    depth = 0
    for k in range(start, len(text)):
        if text[k] in "([{":
            depth += 1
        elif text[k] in ")]}":
            depth -= 1
            if depth == 0:
                return k + 1
    return None


@dataclasses.dataclass
class Signature:
    where: str
    name: str
    params: str
    returns: str | None
    qualified: bool = True  # written moeckpt.NAME


def documented_signatures() -> list[Signature]:
    """The signatures the docs write: in docs/PYTHON_API.md, each `moeckpt.NAME(...)` entry of an
    unmarked fence without a language; in README.md and docs/*.md, an inline code span
    `[moeckpt.]NAME(...)` that starts a list item or has a `*` / `**` marker."""
    sigs = []
    text = PYTHON_API.read_text(encoding="utf-8")
    lines = text.splitlines()
    in_fence, lang, marked = False, "", False
    for k, line in enumerate(lines):
        fence = FENCE.match(line)
        if fence and not in_fence:
            in_fence, lang = True, fence.group(2)
            marked = k > 0 and MARKER.match(lines[k - 1]) is not None
            continue
        if in_fence and line.strip().startswith("```"):
            in_fence = False
            continue
        if in_fence and not lang and not marked and line.startswith("moeckpt."):
            entry = line
            j = k + 1
            while j < len(lines) and lines[j].startswith(" "):
                entry += " " + lines[j].strip()
                j += 1
            m = re.match(r"moeckpt\.(\w+)\(", entry)
            end = _balanced_call(entry, m.end() - 1)
            ret = re.match(r"\s*->\s*(.+)$", entry[end:])
            sigs.append(Signature(f"docs/PYTHON_API.md:{k + 1}", m.group(1), entry[m.end():end - 1],
                                  ret.group(1).strip() if ret else None))
    for path in DOC_FILES:
        body = _strip_fences(path.read_text(encoding="utf-8"))
        for m in re.finditer(r"`([^`]+)`", body):
            span = m.group(1)
            c = re.match(r"\s*(moeckpt\.)?([A-Za-z_]\w*)\(", span)
            if not c:
                continue
            end = _balanced_call(span, c.end() - 1)
            if end is None or span[end:].strip() and not span[end:].strip().startswith("->"):
                continue
            params = span[c.end():end - 1]
            line_start = body.rfind("\n", 0, m.start()) + 1
            bullet = re.fullmatch(r"\s*[-*]\s*", body[line_start:m.start()]) is not None
            if not bullet and not re.search(r"(^|,)\s*\*", params):
                continue
            try:
                ast.parse(f"def _({params}): pass")
            except SyntaxError:
                continue  # a call with elisions or values, not a signature
            ret = re.match(r"\s*->\s*(.+)$", span[end:])
            sigs.append(Signature(f"{path.relative_to(ROOT).as_posix()}:{body.count(chr(10), 0, m.start()) + 1}",
                                  c.group(2), params, ret.group(1).strip() if ret else None,
                                  qualified=c.group(1) is not None))
    return sigs


SIGNATURES = documented_signatures()


def _resolve(sig: "Signature"):
    """`moeckpt.NAME` is the package's; a bare NAME an adapter method where the adapter has one
    (the "Methods" list), else the package's."""
    method = getattr(moeckpt.MiMoV2FlashStateDictAdapter, sig.name, None)
    if not sig.qualified and inspect.isfunction(method):
        return method, True
    if sig.name in moeckpt.__all__:
        return getattr(moeckpt, sig.name), False
    return None, False


KIND = {
    "posonly": inspect.Parameter.POSITIONAL_ONLY,
    "arg": inspect.Parameter.POSITIONAL_OR_KEYWORD,
    "vararg": inspect.Parameter.VAR_POSITIONAL,
    "kwonly": inspect.Parameter.KEYWORD_ONLY,
    "kwarg": inspect.Parameter.VAR_KEYWORD,
}
_MISSING = object()


def _documented_params(params: str) -> list[tuple[str, inspect._ParameterKind, object]]:
    args = ast.parse(f"def _({params}): pass").body[0].args
    namespace = {"torch": torch, "moeckpt": moeckpt}
    out = []
    positional = [("posonly", a) for a in args.posonlyargs] + [("arg", a) for a in args.args]
    defaults = [_MISSING] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for (kind, a), d in zip(positional, defaults):
        out.append((a.arg, KIND[kind], d))
    if args.vararg:
        out.append((args.vararg.arg, KIND["vararg"], _MISSING))
    for a, d in zip(args.kwonlyargs, args.kw_defaults):
        out.append((a.arg, KIND["kwonly"], _MISSING if d is None else d))
    if args.kwarg:
        out.append((args.kwarg.arg, KIND["kwarg"], _MISSING))
    return [(n, k, d if d is _MISSING else eval(compile(ast.Expression(d), "<doc>", "eval"), namespace))
            for n, k, d in out]


def _same_default(a, b) -> bool:
    return a is b or (type(a) is type(b) and a == b)


def _fmt(params) -> str:
    return ", ".join(f"{n}:{k.name}" + ("" if d is _MISSING else f"={d!r}") for n, k, d in params)


@pytest.mark.parametrize("sig", SIGNATURES, ids=[f"{s.name}@{s.where}" for s in SIGNATURES])
def test_documented_signature_matches_the_code(sig: Signature):
    obj, is_method = _resolve(sig)
    assert obj is not None, f"{sig.where}: documents {sig.name}(...), which is not a public name of " \
        "moeckpt nor an adapter method"
    real = [p for p in inspect.signature(obj).parameters.values()
            if not p.name.startswith("_") and not (is_method and p.name == "self")]
    real_list = [(p.name, p.kind, _MISSING if p.default is p.empty else p.default) for p in real]
    doc_list = _documented_params(sig.params)
    assert [(n, k) for n, k, _ in doc_list] == [(n, k) for n, k, _ in real_list], \
        f"{sig.where}: {sig.name}'s parameters differ from the code\n  doc:  {_fmt(doc_list)}\n  " \
        f"code: {_fmt(real_list)}"
    for (n, _, d), (_, _, r) in zip(doc_list, real_list):
        assert (d is _MISSING) == (r is _MISSING) and (d is _MISSING or _same_default(d, r)), \
            f"{sig.where}: {sig.name}({n}=...): the doc's default {d!r} is not the code's {r!r}" \
            if d is not _MISSING else f"{sig.where}: {sig.name}({n}): the code has a default ({r!r})"
    annotation = inspect.signature(obj).return_annotation
    if sig.returns and isinstance(annotation, str) and re.fullmatch(r"[\w.]+", annotation):
        assert sig.returns == annotation, f"{sig.where}: {sig.name} returns {annotation}, the doc " \
            f"says {sig.returns}"


def issubclass_safe(obj, cls) -> bool:
    return isinstance(obj, type) and issubclass(obj, cls)


def test_python_api_documents_every_public_name():
    text = PYTHON_API.read_text(encoding="utf-8")
    missing = [n for n in moeckpt.__all__ if not re.search(rf"`(?:moeckpt\.)?{re.escape(n)}\b", text)]
    assert not missing, f"docs/PYTHON_API.md does not document {missing}"
    documented = {s.name for s in SIGNATURES if s.where.startswith("docs/PYTHON_API.md")}
    functions = [n for n in moeckpt.__all__ if inspect.isfunction(getattr(moeckpt, n))]
    assert not set(functions) - documented, \
        f"docs/PYTHON_API.md gives no signature for {sorted(set(functions) - documented)}"
    for cls in (moeckpt.MiMoV2FlashStateDictAdapter,):
        methods = [n for n, f in vars(cls).items() if inspect.isfunction(f) and not n.startswith("_")]
        assert not set(methods) - documented, \
            f"docs/PYTHON_API.md gives no signature for the adapter methods {sorted(set(methods) - documented)}"
    undocumented = [n for n in moeckpt.__all__ if not issubclass_safe(getattr(moeckpt, n), moeckpt.Error)
                    and not (getattr(moeckpt, n).__doc__ or "").strip()]
    assert not undocumented, f"public names without a docstring: {undocumented}"


def test_named_tuple_fields_match_the_docs():
    """docs/PYTHON_API.md gives each NamedTuple's fields, and every `NAME(fields)` or
    "`NAME` ... `NamedTuple` `(fields)`" in the docs names them as the code does."""
    tuples = {n: "(" + ", ".join(getattr(moeckpt, n)._fields) + ")" for n in moeckpt.__all__
              if hasattr(getattr(moeckpt, n), "_fields")}
    assert tuples
    api = _strip_fences(PYTHON_API.read_text(encoding="utf-8"))
    for name, fields in tuples.items():
        assert f"`{fields}`" in api or f"`{name}{fields}`" in api, \
            f"docs/PYTHON_API.md does not give {name}'s fields {fields}"
    names = "|".join(tuples)
    for path in DOC_FILES:
        text = _strip_fences(path.read_text(encoding="utf-8"))
        for m in re.finditer(rf"`({names})\(([^`)]*)\)`", text):
            assert f"({m.group(2)})" == tuples[m.group(1)], \
                f"{path.name}: {m.group(1)}({m.group(2)}), the code has {tuples[m.group(1)]}"
        for m in re.finditer(r"`NamedTuple` `(\([^`)]*\))`", text):
            before = [(text.rfind(f"`{n}`", 0, m.start()), n) for n in tuples]
            pos, name = max(before)
            assert pos >= 0 and m.group(1) == tuples[name], \
                f"{path.name}: a NamedTuple {m.group(1)} after `{name}`, whose fields are {tuples[name]}"


def test_error_table_matches_the_classes():
    text = PYTHON_API.read_text(encoding="utf-8")
    section = text.split("## Errors", 1)[1]
    rows = re.findall(r"^\|\s*`(\w+)`\s*\|\s*`(\w+)`\s*\|\s*`?(\w*)`?\s*\|", section, flags=re.M)
    errors = {n for n in moeckpt.__all__ if issubclass_safe(getattr(moeckpt, n), moeckpt.Error)} - {"Error"}
    assert {r[0] for r in rows} == errors, "the error table of docs/PYTHON_API.md lists other classes"
    for name, kind, base in rows:
        cls = getattr(moeckpt, name)
        assert cls.kind == kind, f"{name}.kind is {cls.kind!r}, the table says {kind!r}"
        bases = {b for b in ("ValueError", "OSError") if issubclass(cls, getattr(builtins, b))}
        assert bases == ({base} if base else set()), f"{name} is also a {bases or 'nothing more'}, " \
            f"the table says {base or 'nothing'}"
        assert issubclass(cls, moeckpt.Error) and issubclass(cls, RuntimeError)


def test_adapter_attributes_match_the_docs(tiny_dir):
    """The "Property ...; attributes ..." line of docs/PYTHON_API.md names what an adapter has."""
    text = PYTHON_API.read_text(encoding="utf-8")
    m = re.search(r"Property ((?:`\w+`(?:, )?)+); attributes ((?:`\w+`,?\s*)+)", text)
    assert m, "docs/PYTHON_API.md lists no adapter properties and attributes"
    properties = re.findall(r"`(\w+)`", m.group(1))
    attributes = re.findall(r"`(\w+)`", m.group(2))
    cls = moeckpt.MiMoV2FlashStateDictAdapter
    adapter = cls(tiny_dir)
    assert [p for p in properties if not isinstance(inspect.getattr_static(cls, p, None), property)] == []
    public = sorted(n for n in vars(adapter) if not n.startswith("_"))
    assert sorted(attributes) == public, f"the adapter's attributes are {public}"
    assert sorted(n for n, v in vars(cls).items() if isinstance(v, property) and not n.startswith("_")) \
        == sorted(properties)
