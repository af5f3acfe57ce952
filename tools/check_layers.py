#!/usr/bin/env python3
"""Fails (exit 1) when a source file includes a header of a layer it may not use, names a
checkpoint family outside that family's spec folder (src/model/<family>/), or has a string literal
naming a command-line flag ("--overwrite") outside src/cli/.

    python3 tools/check_layers.py [ROOT]

The layers (docs/ARCHITECTURE.md), lowest first; each may include its own headers and those of the
layers listed for it. A public header (include/moeckpt/NAME.hpp) belongs to the layer named in
PUBLIC below; a private one (src/LAYER/NAME.hpp) to its folder. Run by the build (CMake), so a
forbidden include fails the build with one line per violation.
"""
from __future__ import annotations

import pathlib
import re
import sys

ALLOWED = {
    "core": set(),
    "io": {"core"},
    "numerics": {"core"},
    "safetensors": {"core", "io", "numerics"},
    "model": {"core", "io"},
    "exec": {"core", "io", "numerics", "safetensors"},
    # Output folders, manifests, locks, worker records: no family, no planner, no plan.
    "job": {"core", "io", "safetensors"},
    "adapter": {"core", "io", "numerics", "safetensors", "model", "exec", "job"},
    "tools": {"core", "io", "numerics", "safetensors", "model", "exec", "job", "adapter"},
    "cli": {"core", "io", "numerics", "safetensors", "model", "exec", "job", "adapter", "tools"},
    "python": {"core", "io", "numerics", "safetensors", "model", "exec", "job", "adapter", "tools"},
}
# Source folders of layers that span several folders.
FOLDER_LAYER = {"verify": "tools", "inspect": "tools", "synth": "tools"}
PUBLIC = {
    "error": "core", "ceil_div": "core",
    "dtype": "safetensors", "safetensors": "safetensors", "safetensors_writer": "safetensors",
    "tensor_source": "safetensors", "sharded_save": "safetensors",
    "numerics": "numerics", "kernels": "numerics", "mxfp4": "numerics", "block_quant": "numerics",
    "model_config": "model", "model_spec": "model", "compat": "model", "tensor_key": "model",
    "scale_layout": "model", "tp_interleaved_qkv": "model",
    "plan": "exec",
    "adapter": "adapter", "distributed": "job", "job": "job",
    "inspect": "tools", "verify": "tools", "synth": "tools",
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
# A checkpoint family is named only inside its spec (src/model/<family>/): everything else asks
# the spec (ModelSpec) and stays model-agnostic.
FAMILY_WORDS = re.compile(r"mimo|deepseek|qwen|glm|minimax|gpt.?oss", re.I)
# Messages below the CLI name an option by tag (option_ref), which each front end spells: a flag in
# a string literal there would reach Python users too.
STRING_LITERAL = re.compile(r'"(?:[^"\\\n]|\\.)*"')
FLAG = re.compile(r"(?<![\w-])--[a-z]")


def layer_of_header(path: str) -> str | None:
    first, _, rest = path.partition("/")
    if first == "moeckpt":
        return PUBLIC.get(pathlib.PurePath(rest).stem, "unknown")
    return FOLDER_LAYER.get(first, first) if rest else None


def main(argv: list[str]) -> int:
    root = pathlib.Path(argv[1] if len(argv) > 1 else pathlib.Path(__file__).resolve().parents[1])
    files = [(p, FOLDER_LAYER.get(p.relative_to(root / "src").parts[0], p.relative_to(root / "src").parts[0]))
             for p in sorted((root / "src").rglob("*")) if p.suffix in (".cpp", ".hpp")]
    files += [(p, PUBLIC.get(p.stem, "unknown")) for p in sorted((root / "include" / "moeckpt").glob("*.hpp"))]
    files += [(p, "python") for p in sorted((root / "python" / "src").rglob("*.cpp"))]
    bad = []
    for path, _ in files:
        rel = path.relative_to(root)
        if rel.parts[:2] == ("src", "model") and (len(rel.parts) > 3 or rel.name == "model_registry.cpp"):
            continue  # a family's own folder, and the registry that lists the families
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if FAMILY_WORDS.search(line):
                bad.append(f"{rel}:{n}: names a checkpoint family outside its spec (src/model/<family>/)")
    for path, _ in files:
        rel = path.relative_to(root)
        if rel.parts[:2] == ("src", "cli"):
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.lstrip().startswith("//") and any(FLAG.search(s) for s in STRING_LITERAL.findall(line)):
                bad.append(f"{rel}:{n}: a string names a command-line flag outside src/cli/ "
                           "(name the option with option_ref)")
    for path, layer in files:
        if layer not in ALLOWED:
            bad.append(f"{path.relative_to(root)}: file of no known layer ({layer})")
            continue
        for inc in INCLUDE.findall(path.read_text(encoding="utf-8")):
            target = layer_of_header(inc)
            if target is None or target == layer:
                continue
            if target not in ALLOWED[layer]:
                bad.append(f"{path.relative_to(root)}: layer {layer} includes \"{inc}\" of layer {target}, "
                           f"which it may not use (allowed: {', '.join(sorted(ALLOWED[layer])) or 'none'})")
    for line in bad:
        print(f"layering: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
