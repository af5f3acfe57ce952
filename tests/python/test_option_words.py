"""Python users read Python's words: a refusal that suggests an option names the keyword argument
(``overwrite=True``, ``resume=True``, ``max_memory=N``), never a CLI flag; and ``moeckpt.synth``
takes the CLI's ``tp_size`` and ``sparse`` and writes the CLI's files with them."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

import moeckpt

ROOT = Path(__file__).resolve().parents[2]
CLI = Path(os.environ.get("MOECKPT_CLI", ROOT / "build" / "moeckpt"))
needs_cli = pytest.mark.skipif(not CLI.exists(), reason=f"the CLI is not built at {CLI}")

FLAG = re.compile(r"(?<![\w-])--[a-z]")


def message(excinfo) -> str:
    text = str(excinfo.value)
    assert not FLAG.search(text), f"a CLI flag in a Python message: {text}"
    return text


def test_overwrite_refusal_names_the_keyword(tiny_dir, tmp_path):
    moeckpt.dequantize_dir(tiny_dir, tmp_path / "out")
    with pytest.raises(moeckpt.DestinationError) as e:
        moeckpt.dequantize_dir(tiny_dir, tmp_path / "out")
    assert "already holds a checkpoint (expected an empty folder, or overwrite=True to replace it)" in message(e)
    # Nothing to resume in a finished folder: overwrite is what replaces it.
    with pytest.raises(moeckpt.DestinationError) as e:
        moeckpt.dequantize_dir(tiny_dir, tmp_path / "out", resume=True)
    assert "nothing to resume (expected overwrite=True to replace it)" in message(e)


def test_resume_refusal_names_the_keyword(tiny_dir, tmp_path):
    # What a killed conversion leaves: its manifest (the refusal comes before it is read).
    out = tmp_path / "out"
    out.mkdir()
    (out / ".moeckpt-manifest.json").write_text("{}")
    with pytest.raises(moeckpt.DestinationError) as e:
        moeckpt.dequantize_dir(tiny_dir, out)
    assert ("holds an unfinished conversion (expected resume=True to continue it, or overwrite=True to start over)"
            in message(e))


def test_memory_budget_refusal_names_the_keyword_and_the_budget_that_works(tiny_dir, tmp_path):
    for call in (lambda: moeckpt.dequantize_dir(tiny_dir, tmp_path / "dq", max_memory=1000),
                 lambda: moeckpt.from_hf_dir(tiny_dir, max_memory=1000)):
        with pytest.raises(moeckpt.InvalidArgumentError) as e:
            call()
        m = re.search(r"expected a memory budget of at least (\d+) bytes: max_memory=(\d+)\)", message(e))
        assert m and m[1] == m[2], str(e.value)
    need = int(m[2])
    assert len(moeckpt.from_hf_dir(tiny_dir, max_memory=need)) > 0


def files(d: Path) -> dict[str, bytes]:
    return {n: (d / n).read_bytes() for n in sorted(os.listdir(d))}


@needs_cli
@pytest.mark.parametrize("preset, kwargs, flags", [
    ("v26-tiny", {"tp_size": 2}, ["--tp-size", "2"]),
    ("tiny", {"sparse": True}, ["--sparse"]),
    ("deepseek-v3-tiny", {"sparse": True, "layers": 2}, ["--sparse", "--layers", "2"]),
])
def test_synth_options_write_the_clis_files(tmp_path, preset, kwargs, flags):
    moeckpt.synth(tmp_path / "py", preset, seed=3, **kwargs)
    r = subprocess.run([str(CLI), "synth", str(tmp_path / "cli"), "--preset", preset, "--seed", "3", *flags],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert files(tmp_path / "py") == files(tmp_path / "cli")
    # The option took effect: without it the files differ.
    plain = {k: v for k, v in kwargs.items() if k == "layers"}
    moeckpt.synth(tmp_path / "plain", preset, seed=3, **plain)
    assert files(tmp_path / "plain") != files(tmp_path / "py")


def test_synth_refuses_options_a_preset_does_not_take(tmp_path):
    with pytest.raises(moeckpt.InvalidArgumentError, match="TP degree"):
        moeckpt.synth(tmp_path / "a", "tiny", tp_size=2)
    with pytest.raises(moeckpt.InvalidArgumentError, match="sparse"):
        moeckpt.synth(tmp_path / "b", "v26-tiny", sparse=True)
    assert not (tmp_path / "a" / "config.json").exists() and not (tmp_path / "b" / "config.json").exists()
