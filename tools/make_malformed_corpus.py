#!/usr/bin/env python3
"""Regenerates the hostile-input corpus from the built CLI.

    tools/make_malformed_corpus.py build/moeckpt

Writes, under tests/data/:
  corpus_base/hf       `moeckpt synth --preset micro --seed 1` (the unmodified HF base)
  corpus_base/native   `moeckpt from-hf` of it (the unmodified native base)
  corpus_base/deepseek `moeckpt synth --preset deepseek-v3-micro --seed 1` (the DeepSeek-V3 format's base)
  corpus_base/qwen3_moe, corpus_base/glm4_moe, corpus_base/minimax_m2, corpus_base/gpt_oss
                       `synth --preset qwen3-moe-micro-fp8` / `glm4-moe-micro` / `minimax-m2-micro` /
                       `gpt-oss-micro --seed 1`
  malformed/CASE/      one full checkpoint folder per defect, derived from a base by editing
                       headers, bytes, the index or config.json; `expect.json` says which commands
                       apply and the fragment each one's error must contain
  accepted/CASE/       unusual but valid variants every command must accept

expect.json: {"layout": "hf" | "native", "ranks": bool,
              "commands": {"inspect" | "from-hf" | "to-hf" | "verify":
                           {"error": "<fragment of the message>", "file": "<file at fault>" | null}}}
(a command not listed does not apply; "file" null: the message names some path in the case
folder; "ranks": the case folder holds rank0/, rank1/ and to-hf gets both; verify compares the
case with the unmodified base of its layout). Pure standard library.
"""
import json
import math
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile

DATA = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"
BAD = DATA / "malformed"
GOOD = DATA / "accepted"
BASE = DATA / "corpus_base"
SEEDS = DATA.parent.parent / "fuzz" / "corpus" / "from_hf"
FUZZ_FILES = ["config.json", "model.safetensors.index.json"] + [f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)]
MAX_SEED = 65536  # scripts/fuzz.sh runs the fuzzers with -max_len=65536

DTYPE_SIZE = {"F8_E4M3": 1, "BF16": 2, "F16": 2, "F32": 4, "I32": 4, "I16": 2, "I8": 1, "U8": 1}


# ---------------------------------------------------------------- safetensors files and folders
def st_bytes(header_text, data):
    h = header_text.encode() if isinstance(header_text, str) else header_text
    return struct.pack("<Q", len(h)) + h + data


class Shard:
    """A safetensors file as (metadata, ordered tensors with their bytes)."""

    def __init__(self, raw):
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        data = raw[8 + n:]
        self.meta = header.pop("__metadata__", None)
        self.tensors = {}
        for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            b, e = t["data_offsets"]
            self.tensors[name] = {"dtype": t["dtype"], "shape": list(t["shape"]), "data": bytearray(data[b:e])}

    def header(self):
        h = {}
        if self.meta is not None:
            h["__metadata__"] = self.meta
        off = 0
        for name, t in self.tensors.items():
            h[name] = {"dtype": t["dtype"], "shape": t["shape"], "data_offsets": [off, off + len(t["data"])]}
            off += len(t["data"])
        return h

    def data(self):
        return b"".join(bytes(t["data"]) for t in self.tensors.values())

    def raw(self):
        return st_bytes(json.dumps(self.header()), self.data())


class Folder:
    """A checkpoint folder loaded for editing: config, index (or a single file) and shards."""

    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.config = json.loads((self.path / "config.json").read_text())
        idx = self.path / "model.safetensors.index.json"
        self.index = json.loads(idx.read_text()) if idx.exists() else None
        files = sorted(set(self.index["weight_map"].values())) if self.index else ["model.safetensors"]
        self.shards = {f: Shard((self.path / f).read_bytes()) for f in files}
        # Unchanged files are saved byte for byte as they were (git stores them once).
        self.original = {f: (self.shards[f].raw(), (self.path / f).read_bytes()) for f in files}
        self.original_config = (json.dumps(self.config), (self.path / "config.json").read_text())
        self.original_index = (json.dumps(self.index), idx.read_text()) if self.index else None

    def file_of(self, name):
        for f, s in self.shards.items():
            if name in s.tensors:
                return f
        raise KeyError(name)

    def t(self, name):
        return self.shards[self.file_of(name)].tensors[name]

    def remove(self, name):
        f = self.file_of(name)
        del self.shards[f].tensors[name]
        if self.index:
            del self.index["weight_map"][name]
        return f

    def add(self, name, dtype, shape, data, file=None):
        f = file or sorted(self.shards)[0]
        self.shards[f].tensors[name] = {"dtype": dtype, "shape": shape, "data": bytearray(data)}
        if self.index:
            self.index["weight_map"][name] = f
        return f

    def save(self, dst):
        dst = pathlib.Path(dst)
        dst.mkdir(parents=True, exist_ok=True)
        same = json.dumps(self.config) == self.original_config[0]
        (dst / "config.json").write_text(self.original_config[1] if same else json.dumps(self.config, indent=2) + "\n")
        total = 0
        for f, s in self.shards.items():
            raw = s.raw()
            (dst / f).write_bytes(self.original[f][1] if f in self.original and raw == self.original[f][0] else raw)
            total += len(s.data())
        if self.index:
            self.index.setdefault("metadata", {})["total_size"] = total
            same = json.dumps(self.index) == self.original_index[0]
            (dst / "model.safetensors.index.json").write_text(
                self.original_index[1] if same else json.dumps(self.index, indent=2) + "\n")


def f32(x):
    return struct.pack("<f", x)


# ------------------------------------------------------------------------------------ the cases
CASES = []  # (name, layout, build(dst), commands, file, ranks)
ACCEPTED = []  # (name, build(dst))

HF_SHARD = "model-00002-of-00004.safetensors"  # the middle shard (the first opened is 00001)
INDEX = "model.safetensors.index.json"
NATIVE_FILE = "model.safetensors"  # an EP rank's single file
NOT_NATIVE = "holds the HF layout, not the native layout"
NOT_HF = "holds the native layout, not HF"
E = "model.layers.1.mlp.experts."


def case(name, fragment, file=None, layout="hf", to_hf=None, from_hf=None, only=None, ranks=False):
    """Registers a case; `fragment` is every command's unless overridden."""
    def register(build):
        if only is not None:
            commands = dict(only)
        else:
            commands = {c: fragment for c in ("inspect", "from-hf", "to-hf", "verify")}
            if to_hf is not None:
                commands["to-hf"] = to_hf
            if from_hf is not None:
                commands["from-hf"] = from_hf
        files = {c: file for c in commands}
        if commands.get("to-hf") == NOT_NATIVE or commands.get("from-hf", "").endswith(NOT_HF):
            # the layout refusal names the first tensor that shows the layout, not the defect
            files.update({c: None for c, f in commands.items() if f in (NOT_NATIVE,) or f.endswith(NOT_HF)})
        CASES.append((name, layout, build, commands, files, ranks))
        return build
    return register


def hf_copy(dst):
    shutil.copytree(BASE / "hf", dst)


def base_edit(base):
    """Cases built by editing the `base` folder with `edit(folder)` and saving the result."""
    def make(edit):
        def build(dst):
            f = Folder(BASE / base)
            edit(f)
            f.save(dst)
        return build
    return make


hf_edit = base_edit("hf")
native_edit = base_edit("native")


def shard_raw(edit_raw, shard=HF_SHARD):
    """A case whose shard bytes are replaced by edit_raw(Shard) -> bytes."""
    def build(dst):
        hf_copy(dst)
        s = Shard((dst / shard).read_bytes())
        (dst / shard).write_bytes(edit_raw(s))
    return build


def header_json(s, edit):
    """The shard's bytes with its header dict edited (data area unchanged)."""
    h = s.header()
    edit(h)
    return st_bytes(json.dumps(h), s.data())


def tensors_of(h):
    return [k for k in h if k != "__metadata__"]


# --- safetensors rules (the Rust reference's, plus duplicate names), on one shard of the base
def register_format_cases():
    def reg(name, fragment, edit_raw):
        case(name, fragment, file=HF_SHARD)(shard_raw(edit_raw))

    reg("file_too_short", "too short", lambda s: b"\x08\0\0\0")
    reg("header_length_too_large", "too large", lambda s: struct.pack("<Q", 100_000_001) + s.raw()[8:])
    reg("header_past_end_of_file", "runs past the end", lambda s: struct.pack("<Q", len(s.raw())) + s.raw()[8:])

    def not_utf8(s):
        raw = s.raw()
        name = next(iter(s.tensors)).encode()
        at = raw.index(b'"' + name + b'"') + 1
        return raw[:at] + b"\xff\xfe" + raw[at + 2:]
    reg("header_not_utf8", "UTF-8", not_utf8)

    def not_json(s):
        raw = s.raw()
        n = struct.unpack("<Q", raw[:8])[0]
        return raw[:8 + n - 1] + b" " + raw[8 + n:]  # the closing brace is gone
    reg("header_not_json", "not valid JSON", not_json)

    def not_object(s):
        raw = s.raw()
        n = struct.unpack("<Q", raw[:8])[0]
        return raw[:8] + b"[1, 2, 3]".ljust(n) + raw[8 + n:]
    reg("header_not_an_object", "not a JSON object", not_object)
    reg("metadata_nested", "__metadata__", lambda s: header_json(s, lambda h: h.update({"__metadata__": {"format": {"b": "c"}}})))
    reg("metadata_value_not_string", "__metadata__", lambda s: header_json(s, lambda h: h.update({"__metadata__": {"format": 1}})))

    def first(h):
        return h[tensors_of(h)[0]]

    def last(h):
        return h[tensors_of(h)[-1]]

    reg("unknown_dtype", "unknown dtype", lambda s: header_json(s, lambda h: first(h).update(dtype="F8_E4M3FN")))
    reg("negative_shape", "not a non-negative integer", lambda s: header_json(s, lambda h: first(h).update(shape=[-1] + first(h)["shape"][1:])))

    def sentinel(s, edit, token, text):
        h = s.header()
        edit(h)
        return st_bytes(json.dumps(h).replace(json.dumps(token), text), s.data())

    reg("float_shape", "not a non-negative integer", lambda s: sentinel(s, lambda h: first(h)["shape"].__setitem__(0, "@F"), "@F", str(float(first(s.header())["shape"][0]))))
    reg("negative_offset", "non-negative integers", lambda s: header_json(s, lambda h: first(h).update(data_offsets=[-1, first(h)["data_offsets"][1]])))
    reg("float_offset", "non-negative integers", lambda s: sentinel(s, lambda h: first(h)["data_offsets"].__setitem__(1, "@F"), "@F", str(float(first(s.header())["data_offsets"][1]))))
    reg("offsets_not_a_pair", "not a pair", lambda s: header_json(s, lambda h: first(h)["data_offsets"].append(first(h)["data_offsets"][1])))

    def shift_from(s, k, delta):
        h = s.header()
        for name in tensors_of(h)[k:]:
            h[name]["data_offsets"] = [o + delta for o in h[name]["data_offsets"]]
        return h

    def overlap(s):
        h = shift_from(s, 1, -2)
        return st_bytes(json.dumps(h), s.data()[:-2])
    reg("offsets_overlap", "overlap", overlap)

    def hole(s):
        h = shift_from(s, 1, 2)
        first_len = len(next(iter(s.tensors.values()))["data"])
        d = s.data()
        return st_bytes(json.dumps(h), d[:first_len] + b"\0\0" + d[first_len:])
    reg("offsets_hole", "hole", hole)
    reg("offsets_not_from_zero", "hole", lambda s: st_bytes(json.dumps(shift_from(s, 0, 8)), b"\0" * 8 + s.data()))

    def reversed_offsets(s):
        h = s.header()
        b, e = last(h)["data_offsets"]
        last(h)["data_offsets"] = [e, b]
        return st_bytes(json.dumps(h), s.data())
    reg("offsets_reversed", "reversed", reversed_offsets)
    reg("size_mismatch", "needs", lambda s: header_json(s, lambda h: first(h).update(shape=[first(h)["shape"][0] + 1] + first(h)["shape"][1:])))
    reg("shape_product_overflows", "overflows", lambda s: header_json(s, lambda h: first(h).update(shape=[2**32, 2**32])))
    reg("byte_size_wraps_to_zero", "overflows", lambda s: header_json(s, lambda h: first(h).update(dtype="F32", shape=[2**31, 2**31])))
    reg("dimension_beyond_2_48", "has a dimension larger than any tensor", lambda s: header_json(s, lambda h: first(h).update(shape=[2**64 - 1, 0])))
    reg("trailing_bytes", "trailing bytes", lambda s: s.raw() + b"\0\0\0")
    reg("truncated_data", "truncated", lambda s: s.raw()[:-3])

    def duplicate(s):
        h = s.header()
        name = tensors_of(h)[0]
        text = json.dumps(h)
        entry = json.dumps(name) + ": " + json.dumps(h[name])
        return st_bytes(text.replace(entry, entry + ", " + entry, 1), s.data())
    reg("duplicate_tensor_name", "duplicate key", duplicate)
    reg("missing_dtype", 'no "dtype"', lambda s: header_json(s, lambda h: first(h).pop("dtype")))

    def sub_byte(s):
        h = s.header()
        t = first(h)
        n = t["data_offsets"][1] - t["data_offsets"][0]
        t.update(dtype="F4", shape=[2 * n - 1])
        return st_bytes(json.dumps(h), s.data())
    reg("sub_byte_remainder", "sub-byte", sub_byte)


# --- the index: shards named must exist, stay inside the folder and agree with the index
def register_index_cases():
    def reg(name, fragment, edit_index, file=INDEX, extra=None):
        def build(dst):
            hf_copy(dst)
            idx = json.loads((dst / INDEX).read_text())
            out = edit_index(idx)
            (dst / INDEX).write_text(out if isinstance(out, str) else json.dumps(idx, indent=2))
            if extra:
                extra(dst)
        case(name, fragment, file=file)(build)

    some = "model.layers.0.input_layernorm.weight"
    reg("index_missing_shard", "cannot open", lambda i: i["weight_map"].update({"model.layers.0.extra.weight": "model-00009-of-00004.safetensors"}), file="model-00009-of-00004.safetensors")
    reg("index_path_traversal", "not a plain file name", lambda i: i["weight_map"].update({some: "../" + HF_SHARD}))
    reg("index_absolute_path", "not a plain file name", lambda i: i["weight_map"].update({some: "/etc/passwd"}))
    reg("index_subdirectory", "not a plain file name", lambda i: i["weight_map"].update({some: "sub/" + HF_SHARD}))
    reg("index_names_config_json", "which is not a .safetensors file", lambda i: i["weight_map"].update({some: "config.json"}))
    reg("index_tensor_not_in_shard", "lacks it", lambda i: i["weight_map"].update({"model.layers.0.extra.weight": HF_SHARD}), file=HF_SHARD)

    def wrong(i):
        name = next(k for k, v in i["weight_map"].items() if v == HF_SHARD)
        i["weight_map"][name] = "model-00003-of-00004.safetensors"
    reg("index_wrong_shard", "but the index places it in model-00003-of-00004.safetensors", wrong, file=HF_SHARD)

    def unlisted(i):
        name = next(k for k, v in i["weight_map"].items() if v == HF_SHARD)
        del i["weight_map"][name]
    reg("index_shard_tensor_not_in_index", "not in the index", unlisted, file=HF_SHARD)
    reg("index_not_json", "not valid JSON", lambda i: json.dumps(i)[:-2])
    reg("index_not_an_object", "index is not a JSON object", lambda i: "[]")
    reg("index_total_size_wrong", "total_size", lambda i: i["metadata"].update(total_size=i["metadata"]["total_size"] + 1))
    reg("index_total_size_not_a_number", "is not a byte count", lambda i: i["metadata"].update(total_size="big"))
    reg("index_no_weight_map", 'no "weight_map"', lambda i: i.pop("weight_map"))
    reg("index_weight_map_value_not_string", "weight_map value is not a file name", lambda i: i["weight_map"].update({some: 3}))

    def dup(i):
        text = json.dumps(i)
        entry = json.dumps(some) + ": " + json.dumps(i["weight_map"][some])
        return text.replace(entry, entry + ", " + entry, 1)
    reg("index_duplicate_key", "duplicate key", dup)
    reg("index_invalid_shard", "too short", lambda i: None, file=HF_SHARD, extra=lambda d: (d / HF_SHARD).write_bytes(b"\1\2"))

    def no_checkpoint(dst):
        hf_copy(dst)
        for p in dst.iterdir():
            if p.name != "config.json":
                p.unlink()
        (dst / "README").write_text("nothing here\n")
    case("no_checkpoint", "no checkpoint here")(no_checkpoint)


# --- config.json
def register_config_cases():
    def reg(name, fragment, edit, file="config.json", to_hf=None):
        def build(dst):
            hf_copy(dst)
            c = json.loads((dst / "config.json").read_text())
            out = edit(c)
            (dst / "config.json").write_text(out if isinstance(out, str) else json.dumps(c, indent=2))
        case(name, fragment, file=file, to_hf=to_hf)(build)

    def missing(dst):
        hf_copy(dst)
        (dst / "config.json").unlink()
    case("config_missing", "cannot open for reading", file="config.json")(missing)
    reg("config_not_json", "config is not valid JSON", lambda c: json.dumps(c)[:-1])
    reg("config_not_an_object", "config is not a JSON object", lambda c: "[1, 2]")
    reg("config_missing_hidden_size", 'config has no "hidden_size"', lambda c: c.pop("hidden_size"))
    reg("config_missing_layer_pattern", 'config has no "hybrid_layer_pattern"', lambda c: c.pop("hybrid_layer_pattern"))
    reg("config_missing_n_routed_experts", 'config has no "n_routed_experts"', lambda c: c.pop("n_routed_experts"))
    reg("config_hidden_size_not_integer", 'config field "hidden_size" is "136"', lambda c: c.update(hidden_size="136"))
    reg("config_negative_head_dim", 'config field "head_dim" is -32', lambda c: c.update(head_dim=-32))
    reg("config_pattern_length", 'config field "hybrid_layer_pattern" has 3 entries', lambda c: c.update(hybrid_layer_pattern=[0, 1, 1]))
    reg("config_moe_freq_value", 'config field "moe_layer_freq" holds 2', lambda c: c.update(moe_layer_freq=[0, 2]))
    reg("config_heads_not_multiple_of_kv", "is not a multiple of its key/value head count", lambda c: c.update(num_attention_heads=3, num_key_value_heads=2))
    reg("config_experts_per_tok_exceeds", "exceeds n_routed_experts", lambda c: c.update(num_experts_per_tok=9))
    reg("config_block_size_malformed", "weight_block_size is missing or malformed", lambda c: c["quantization_config"].update(weight_block_size=[128]))
    reg("config_block_size_zero", "weight_block_size is missing or malformed", lambda c: c["quantization_config"].update(weight_block_size=[0, 128]))
    reg("config_block_size_negative", "weight_block_size is missing or malformed", lambda c: c["quantization_config"].update(weight_block_size=[128, -128]))
    reg("config_block_size_near_int64_max", "is larger than any block scaling uses", lambda c: c["quantization_config"].update(weight_block_size=[2**63 - 1, 128]))
    reg("config_block_size_beyond_bound", "is larger than any block scaling uses", lambda c: c["quantization_config"].update(weight_block_size=[128, 65537]))
    # A block size the scale grids contradict (the real 128-grids would be read as "extras"): the
    # error names a scale grid that shows it.
    reg("config_block_size_double", "weight_block_size that matches the scale grids", lambda c: c["quantization_config"].update(weight_block_size=[256, 256]), file="model-00001-of-00004.safetensors", to_hf=NOT_NATIVE)
    reg("config_block_size_rows_only", "fit 128-element blocks along rows", lambda c: c["quantization_config"].update(weight_block_size=[512, 128]), file="model-00001-of-00004.safetensors", to_hf=NOT_NATIVE)
    reg("config_block_size_columns_only", "fit 128-element blocks along columns", lambda c: c["quantization_config"].update(weight_block_size=[128, 1024]), file="model-00001-of-00004.safetensors", to_hf=NOT_NATIVE)
    reg("config_block_size_beyond_tensors", "weight_block_size that matches the scale grids", lambda c: c["quantization_config"].update(weight_block_size=[65536, 65536]), file="model-00001-of-00004.safetensors", to_hf=NOT_NATIVE)
    # consistent on its own, but not with the tensors
    reg("config_more_experts_than_tensors", "are missing for experts [0, 5)", lambda c: c.update(n_routed_experts=5), file=None, to_hf=NOT_NATIVE)
    reg("config_fewer_experts_than_tensors", "expert id 3 is not below n_routed_experts = 3", lambda c: c.update(n_routed_experts=3), file=None, to_hf=NOT_NATIVE)
    reg("config_hidden_size_disagrees", "shape [32, 136] disagrees with config.json (expected [32, 128])", lambda c: c.update(hidden_size=128), file=None, to_hf=NOT_NATIVE)
    reg("config_intermediate_size_disagrees", "disagrees with config.json", lambda c: c.update(intermediate_size=48), file=None, to_hf=NOT_NATIVE)
    reg("config_moe_intermediate_disagrees", "disagrees with config.json", lambda c: c.update(moe_intermediate_size=32), file=None, to_hf=NOT_NATIVE)
    reg("config_vocab_disagrees", "disagrees with config.json", lambda c: c.update(vocab_size=64), file=None, to_hf=NOT_NATIVE)
    reg("config_head_dim_disagrees", "disagrees with config.json", lambda c: c.update(head_dim=64), file=None, to_hf=NOT_NATIVE)
    # Sizes that drove row loops before they were checked against the tensors (inspect ran "for years").
    reg("config_heads_2_24", "disagrees with config.json", lambda c: c.update(num_attention_heads=2**24), file=None, to_hf=NOT_NATIVE)
    reg("config_head_dim_2_24", "disagrees with config.json", lambda c: c.update(head_dim=2**24), file=None, to_hf=NOT_NATIVE)
    reg("config_swa_heads_2_24", "disagrees with config.json", lambda c: c.update(swa_num_attention_heads=2**24), file=None, to_hf=NOT_NATIVE)
    reg("config_swa_head_dim_2_24", "disagrees with config.json", lambda c: c.update(swa_head_dim=2**24), file=None, to_hf=NOT_NATIVE)
    reg("config_more_layers_than_tensors", "missing: layer 2", lambda c: c.update(num_hidden_layers=3, hybrid_layer_pattern=[0, 1, 1], moe_layer_freq=[0, 1, 1]), file=None, to_hf=NOT_NATIVE)
    reg("config_fewer_layers_than_tensors", "layer 1 is not below num_hidden_layers = 1", lambda c: c.update(num_hidden_layers=1, hybrid_layer_pattern=[0], moe_layer_freq=[0]), file=None, to_hf=NOT_NATIVE)
    reg("config_moe_layer_marked_dense", "which config.json makes a dense layer", lambda c: c.update(moe_layer_freq=[0, 0]), file=None, to_hf=NOT_NATIVE)
    reg("config_sink_on_full_attention", "tensor 'model.layers.0.self_attn.attention_sink_bias': missing", lambda c: c.update(add_full_attention_sink_bias=True), file=None, to_hf=NOT_NATIVE)


# --- semantic problems of the HF layout
def register_hf_semantic_cases():
    def reg(name, fragment, edit, file=None, to_hf=NOT_NATIVE):
        case(name, fragment, file=file, to_hf=to_hf)(hf_edit(edit))

    def drop(*names):
        return lambda f: [f.remove(n) for n in names]

    def where(name):
        return Folder(BASE / "hf").file_of(name)

    reg("missing_expert_projection", "model.layers.1.mlp.experts.2.up_proj.weight", drop(E + "2.up_proj.weight", E + "2.up_proj.weight_scale_inv"))
    reg("missing_whole_expert", "expert weights of layer 1 are missing", drop(*[E + f"1.{p}.weight{s}" for p in ("gate_proj", "up_proj", "down_proj") for s in ("", "_scale_inv")]))
    reg("missing_o_proj", "tensor 'model.layers.0.self_attn.o_proj.weight': missing: layer 0 (full attention, dense)", drop("model.layers.0.self_attn.o_proj.weight"))
    reg("missing_q_proj", "tensor 'model.layers.1.self_attn.q_proj.weight': missing", drop("model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight_scale_inv"))
    reg("missing_dense_down_proj", "tensor 'model.layers.0.mlp.down_proj.weight': missing", drop("model.layers.0.mlp.down_proj.weight", "model.layers.0.mlp.down_proj.weight_scale_inv"))
    reg("missing_router", "tensor 'model.layers.1.mlp.gate.weight': missing", drop("model.layers.1.mlp.gate.weight"))
    reg("missing_attention_sink", "tensor 'model.layers.1.self_attn.attention_sink_bias': missing", drop("model.layers.1.self_attn.attention_sink_bias"))
    reg("missing_layernorm", "tensor 'model.layers.1.post_attention_layernorm.weight': missing", drop("model.layers.1.post_attention_layernorm.weight"))
    reg("missing_final_norm", "tensor 'model.norm.weight': missing", drop("model.norm.weight"))
    reg("missing_lm_head", "tensor 'lm_head.weight': missing", drop("lm_head.weight"))
    reg("missing_embedding", "tensor 'model.embed_tokens.weight': missing", drop("model.embed_tokens.weight"))

    def scale_shape(name, shape):
        def edit(f):
            t = f.t(name)
            rows, cols = shape
            old_rows, old_cols = t["shape"] if len(t["shape"]) == 2 else (1, len(t["data"]) // 4)
            vals = [struct.unpack_from("<f", t["data"], 4 * i)[0] for i in range(len(t["data"]) // 4)]
            grid = [[vals[r * old_cols + c] if r < old_rows and c < old_cols else 0.5 for c in range(cols)] for r in range(rows)]
            t["data"] = bytearray(b"".join(f32(x) for row in grid for x in row))
            t["shape"] = list(shape)
        return edit

    s = E + "0.down_proj.weight_scale_inv"  # weight [136, 24]: scale [2, 1]
    reg("scale_too_few_rows", "scale [1, 1] is too small for weight [136, 24] (expected at least [2, 1]", scale_shape(s, (1, 1)), file=where(s))
    s2 = E + "3.gate_proj.weight_scale_inv"  # weight [24, 136]: scale [1, 2]
    reg("scale_too_few_columns", "scale [1, 1] is too small for weight [24, 136] (expected at least [1, 2]", scale_shape(s2, (1, 1)), file=where(s2))
    s3 = "model.layers.0.self_attn.q_proj.weight_scale_inv"
    reg("attention_scale_too_few_columns", "is too small for weight [64, 136]", scale_shape(s3, (1, 1)), file=where(s3))

    def scale_1d(f):
        t = f.t(s2)
        t["shape"] = [len(t["data"]) // 4]
    reg("scale_not_2d", "is not 2-D", scale_1d, file=where(s2))

    def scale_value(name, index, value):
        def edit(f):
            f.t(name)["data"][4 * index:4 * index + 4] = f32(value)
        return edit

    for tag, value, shown in (("zero", 0.0, "is 0"), ("negative", -0.25, "is -0.25"), ("nan", math.nan, "is nan"),
                              ("posinf", math.inf, "is inf"), ("neginf", -math.inf, "is -inf")):
        reg(f"expert_scale_{tag}", f"scale entry [1, 0] {shown}", scale_value(s, 1, value), file=where(s))
    d = "model.layers.0.mlp.gate_proj.weight_scale_inv"
    reg("dense_scale_zero", "scale entry [0, 1] is 0", scale_value(d, 1, 0.0), file=where(d))
    # Finite but huge: the dequantized values would be +-inf (from-hf used to exit 0).
    reg("expert_scale_overflows", "scale entry [1, 0] is 1e+37: times the block's largest FP8 magnitude",
        scale_value(s, 1, 1e37), file=where(s))
    reg("dense_scale_overflows_bf16", "not finite in BF16", scale_value(d, 1, 3e36), file=where(d))
    k = "model.layers.1.self_attn.k_proj.weight_scale_inv"
    reg("attention_scale_nan", "scale entry [0, 0] is nan", scale_value(k, 0, math.nan), file=where(k))

    def scale_dtype(f):
        f.t(s2)["dtype"] = "I32"
    reg("scale_wrong_dtype", "scale dtype I32 (expected F32, BF16 or F16)", scale_dtype, file=where(s2))

    def nan_code(name, index, code):
        def edit(f):
            f.t(name)["data"][index] = code
        return edit

    w = E + "2.gate_proj.weight"  # [24, 136]
    reg("expert_fp8_nan_7f", "element [1, 3] is NaN (FP8 code 0x7f)", nan_code(w, 136 + 3, 0x7F), file=where(w))
    reg("expert_fp8_nan_ff", "element [23, 135] is NaN (FP8 code 0xff)", nan_code(w, 24 * 136 - 1, 0xFF), file=where(w))
    dw = "model.layers.0.mlp.down_proj.weight"  # [136, 40]
    reg("dense_fp8_nan_7f", "element [130, 0] is NaN (FP8 code 0x7f)", nan_code(dw, 130 * 40, 0x7F), file=where(dw))
    vw = "model.layers.1.self_attn.v_proj.weight"  # [32, 136]
    reg("attention_fp8_nan_ff", "element [0, 129] is NaN (FP8 code 0xff)", nan_code(vw, 129, 0xFF), file=where(vw))

    def reshape(name, shape):
        def edit(f):
            f.t(name)["shape"] = shape
        return edit

    up = "model.layers.0.mlp.up_proj.weight"  # [40, 136]
    reg("weight_shape_disagrees", "tensor 'model.layers.0.mlp.up_proj.weight': shape [20, 272] disagrees with config.json (expected [40, 136])", reshape(up, [20, 272]), file=where(up))
    reg("weight_1d", "shape [3264] disagrees with config.json (expected [24, 136])", reshape(w, [3264]), file=where(w))
    reg("weight_3d", "shape [2, 12, 136] disagrees with config.json (expected [24, 136])", reshape(w, [2, 12, 136]), file=where(w))
    o = "model.layers.1.self_attn.o_proj.weight"
    reg("bf16_weight_shape_disagrees", "shape [32, 136] disagrees with config.json (expected [136, 32])", reshape(o, [32, 136]), file=where(o))

    def unknown_3d(f):
        f.add("model.layers.0.mlp.extra_proj.weight", "F8_E4M3", [2, 2, 2], b"\x38" * 8, file=HF_SHARD)
        f.add("model.layers.0.mlp.extra_proj.weight_scale_inv", "F32", [1, 1], f32(1.0), file=HF_SHARD)
    reg("weight_3d_with_scale", "weight of shape [2, 2, 2] has a scale but is not 2-D", unknown_3d, file=HF_SHARD)

    def int_weight(f):
        f.t(up)["dtype"] = "I8"
    reg("weight_int_dtype_with_scale", "weight of dtype I8 has a block scale", int_weight, file=where(up))
    reg("fp8_weight_without_scale", "tensor 'model.layers.0.mlp.gate_proj.weight': FP8 weight without a '_scale_inv' companion", drop(d), file=where(d[:-len("_scale_inv")]))
    reg("fp8_expert_without_scale", "FP8 expert weight without a '_scale_inv' companion", drop(E + "3.down_proj.weight_scale_inv"), file=where(E + "3.down_proj.weight"))

    def rename_expert(f):
        for p in ("gate_proj", "up_proj", "down_proj"):
            for sfx in ("", "_scale_inv"):
                t = f.t(E + f"3.{p}.weight{sfx}")
                fl = f.remove(E + f"3.{p}.weight{sfx}")
                f.add(E + f"7.{p}.weight{sfx}", t["dtype"], t["shape"], t["data"], file=fl)
    reg("expert_id_out_of_range", "expert id 7 is not below n_routed_experts = 4", rename_expert)

    def dense_expert(f):
        f.add("model.layers.0.mlp.experts.0.gate_proj.weight", "BF16", [24, 136], b"\0" * (24 * 136 * 2), file=HF_SHARD)
    reg("expert_in_dense_layer", "expert weight in layer 0, which config.json makes a dense layer", dense_expert, file=HF_SHARD)

    def layer_out_of_range(f):
        f.add("model.layers.5.input_layernorm.weight", "BF16", [136], b"\0" * 272, file=HF_SHARD)
    reg("layer_index_out_of_range", "layer 5 is not below num_hidden_layers = 2", layer_out_of_range, file=HF_SHARD)

    def grouped_in_hf(f):
        f.add(E + "down_projs", "BF16", [4, 24, 136], b"\0" * (4 * 24 * 136 * 2), file=HF_SHARD)
    case("native_tensor_in_hf_folder", None, file=None, only={
        "inspect": NOT_NATIVE, "from-hf": "tensor 'model.layers.1.mlp.experts.down_projs': is a grouped expert tensor: this folder " + NOT_HF,
        "to-hf": NOT_NATIVE, "verify": NOT_NATIVE})(hf_edit(grouped_in_hf))


# --- semantic problems of the native layout (inspect, verify and to-hf validate; from-hf refuses)
def register_native_cases():
    base = Folder(BASE / "native")
    first = sorted(base.shards)[0]  # where __metadata__ problems are reported
    nw = base.file_of

    def reg(name, fragment, edit, file=first, from_hf=NOT_HF, to_hf=None):
        case(name, fragment, file=file, layout="native", from_hf=from_hf, to_hf=to_hf)(native_edit(edit))

    gu, dn = E + "gate_and_up_projs", E + "down_projs"

    def reshape(name, shape):
        return lambda f: f.t(name).update(shape=shape)

    reg("native_grouped_wrong_shape", "grouped expert tensor of shape [4, 48, 136] disagrees with config.json", reshape(gu, [4, 48, 136]), file=nw(gu))
    reg("native_grouped_wrong_dtype", "grouped expert tensor of dtype I16", lambda f: f.t(dn).update(dtype="I16"), file=nw(dn))
    reg("native_missing_down_projs", "tensor 'model.layers.1.mlp.experts.down_projs': missing", lambda f: f.remove(dn), file=None)
    reg("native_missing_gate_and_up_projs", "tensor 'model.layers.1.mlp.experts.gate_and_up_projs': missing", lambda f: f.remove(gu), file=None)
    reg("native_missing_o_proj", "tensor 'model.layers.0.self_attn.o_proj.weight': missing", lambda f: f.remove("model.layers.0.self_attn.o_proj.weight"), file=None)

    def three_experts(f):
        for n in (gu, dn):
            t = f.t(n)
            t["shape"][0] = 3
            t["data"] = t["data"][: len(t["data"]) * 3 // 4]
    reg("native_fewer_experts_than_metadata", "grouped expert tensor of shape [3, 24, 136] but __metadata__ moeckpt.expert_count = 4", three_experts, file=nw(dn))

    def three_experts_no_meta(f):
        three_experts(f)
        for sh in f.shards.values():
            sh.meta = {"format": "pt"}
    reg("native_fewer_experts_than_config", "the inputs hold 3 of the 4 experts of this layer", three_experts_no_meta, file=nw(dn), from_hf="is a grouped expert tensor: this folder " + NOT_HF)

    def more_experts_config(f):
        f.config["n_routed_experts"] = 5
    reg("native_config_expert_count_disagrees", "with n_routed_experts = 5 that rank holds [0, 5)", more_experts_config)

    def meta(**kv):
        def edit(f):
            for sh in f.shards.values():
                sh.meta.update({"moeckpt." + k: v for k, v in kv.items()})
        return edit
    reg("native_metadata_layout_not_native", 'moeckpt.layout is "hf"', meta(layout="hf"), from_hf="is a grouped expert tensor: this folder " + NOT_HF)
    reg("native_metadata_rank_outside_world", "moeckpt.ep_rank = 3 with ep_size = 2", meta(ep_size="2", ep_rank="3"))
    reg("native_metadata_start_inconsistent", "__metadata__ says experts [1, 5) for EP rank 0/1", meta(expert_start="1"))
    reg("native_metadata_count_inconsistent", "__metadata__ says experts [0, 3) for EP rank 0/1", meta(expert_count="3"))
    reg("native_metadata_not_a_number", '__metadata__ moeckpt.ep_size = "two" is not a count', meta(ep_size="two"))

    def drop_rank(f):
        for sh in f.shards.values():
            del sh.meta["moeckpt.ep_rank"]
    reg("native_metadata_missing_key", 'has moeckpt keys but no "moeckpt.ep_rank"', drop_rank)

    def bf16_bits(name, index, bits):
        def edit(f):
            f.t(name)["data"][2 * index:2 * index + 2] = struct.pack("<H", bits)
        return edit
    only_quantizing = {"inspect": "of the weight to quantize is nan", "to-hf": "of the weight to quantize is nan",
                       "verify": "of the weight to quantize is nan", "from-hf": NOT_HF}
    case("native_bf16_nan_in_experts", None, file=nw(gu), layout="native", only=only_quantizing)(native_edit(bf16_bits(gu, 1000, 0x7FC0)))
    case("native_bf16_inf_in_attention", None, file=nw("model.layers.0.self_attn.q_proj.weight"), layout="native",
         only={c: ("of the weight to quantize is inf" if c != "from-hf" else NOT_HF) for c in only_quantizing})(
        native_edit(bf16_bits("model.layers.0.self_attn.q_proj.weight", 200, 0x7F80)))
    case("native_bf16_neg_inf_in_dense_mlp", None, file=nw("model.layers.0.mlp.down_proj.weight"), layout="native",
         only={c: ("of the weight to quantize is -inf" if c != "from-hf" else NOT_HF) for c in only_quantizing})(
        native_edit(bf16_bits("model.layers.0.mlp.down_proj.weight", 7, 0xFF80)))

    def scale_in_native(f):
        f.add("model.layers.0.mlp.up_proj.weight_scale_inv", "F32", [1, 2], f32(1.0) * 2)
    reg("native_with_hf_scale", "tensor 'model.layers.0.mlp.up_proj.weight_scale_inv': is an FP8 block scale: this folder " + NOT_NATIVE, scale_in_native, from_hf="is a grouped expert tensor: this folder " + NOT_HF)
    reg("native_shape_disagrees", "tensor 'model.layers.1.self_attn.o_proj.weight': shape [32, 136] disagrees with config.json", reshape("model.layers.1.self_attn.o_proj.weight", [32, 136]), file=nw("model.layers.1.self_attn.o_proj.weight"))

    def grouped_in_dense(f):
        t = f.t(dn)
        f.add("model.layers.0.mlp.experts.down_projs", "BF16", list(t["shape"]), t["data"])
    reg("native_grouped_in_dense_layer", "grouped expert tensor in layer 0, which config.json makes a dense layer", grouped_in_dense)

    # EP rank folders that do not make one checkpoint (to-hf gets rank0/ and rank1/)
    def ranks(a, b):
        def build(dst):
            shutil.copytree(BASE / "ranks" / a, dst / "rank0")
            shutil.copytree(BASE / "ranks" / b, dst / "rank1")
        return build
    case("ranks_same_rank_twice", None, file="rank1/" + NATIVE_FILE, layout="native", ranks=True,
         only={"to-hf": "EP rank 0 is given twice (input folders 1 and 2)"})(ranks("ep2_rank0", "ep2_rank0"))
    case("ranks_gap", None, file="rank0/" + NATIVE_FILE, layout="native", ranks=True,
         only={"to-hf": "the inputs hold 3 of the 4 experts of this layer"})(ranks("ep3_rank0", "ep3_rank2"))
    case("ranks_different_world_sizes", None, file="rank1/" + NATIVE_FILE, layout="native", ranks=True,
         only={"to-hf": "moeckpt.ep_size = 3 but another input folder says 2"})(ranks("ep2_rank0", "ep3_rank1"))


# --- accepted: unusual but valid
V26 = DATA / "v26" / "tp2" / "hf"  # the committed MiMo-V2.6 fixture (tools/make_v26_fixture.py)
V25 = DATA / "v25" / "hf"  # the committed MiMo-V2.5-Pro fixture (tools/make_v26_fixture.py --v25)
V26_SHARD1 = "model-00001-of-00002.safetensors"  # embeddings, layers 0 and 1
V26_QKV = "model.layers.0.self_attn.qkv_proj.weight"
V26_EXPERT = "model.layers.1.mlp.experts.2.down_proj.weight"


def shrink_rows(name, n=1):
    """An edit dropping the last `n` rows of tensor `name` (shape and data)."""
    def edit(f):
        t = f.t(name)
        row = len(t["data"]) // t["shape"][0]
        t["shape"][0] -= n
        del t["data"][len(t["data"]) - n * row:]
    return edit


def register_v26_cases():
    """MiMo-V2.6 (fused QKV over metadata.tp_size, MXFP4 experts): interleave sizes against tp_size,
    scale grids, packed widths, E8M0 codes."""
    def v26(edit, index_edit=None):
        def build(dst):
            f = Folder(V26)
            edit(f)
            if index_edit:
                index_edit(f.index)
            f.save(dst)
        return build

    def reg(name, fragment, edit, file=V26_SHARD1, index_edit=None):
        case(name, fragment, file=file, to_hf=NOT_NATIVE)(v26(edit, index_edit))

    def none(f):
        pass

    def set_tp(v):
        return lambda idx: idx["metadata"].__setitem__("tp_size", v)

    reg("v26_tp_size_missing", "does not fit 1 TP shards", none,
        index_edit=lambda idx: idx["metadata"].pop("tp_size"))
    reg("v26_tp_size_not_dividing_heads", "does not divide", none, index_edit=set_tp(3))
    reg("v26_tp_size_string", "metadata.tp_size is \"2\"", none, file="model.safetensors.index.json",
        index_edit=set_tp("2"))
    reg("v26_tp_size_zero", "metadata.tp_size is 0", none, file="model.safetensors.index.json", index_edit=set_tp(0))
    reg("v26_tp_size_float", "metadata.tp_size is 2.0", none, file="model.safetensors.index.json",
        index_edit=set_tp(2.0))

    def grow_cols(name, fill):
        def edit(f):
            t = f.t(name)
            r, c = t["shape"]
            size = len(t["data"]) // (r * c)
            rows = [t["data"][i * c * size:(i + 1) * c * size] + bytes(fill) for i in range(r)]
            t["data"] = bytearray(b"".join(rows))
            t["shape"][1] = c + 1
        return edit

    reg("v26_qkv_rows_short", "the checkpoint TP degree 2", shrink_rows(V26_QKV, 1))
    reg("v26_qkv_scale_rows_short", "does not fit 2 TP shards", shrink_rows(V26_QKV + "_scale_inv", 1))
    reg("v26_qkv_scale_column_extra", "does not fit 2 TP shards", grow_cols(V26_QKV + "_scale_inv", f32(1.0)))
    reg("v26_qkv_without_scale", "FP8 weight without a '_scale_inv' companion",
        lambda f: f.remove(V26_QKV + "_scale_inv"))
    reg("v26_packed_weight_odd_width", "disagrees with config.json", grow_cols(V26_EXPERT, b"\x11"))
    reg("v26_mx_scale_wrong_shape", "does not fit weight", grow_cols(V26_EXPERT + "_scale", b"\x7f"))
    reg("v26_mx_scale_missing", "without its '_scale' companion", lambda f: f.remove(V26_EXPERT + "_scale"))

    def poke(name, at, value):
        def edit(f):
            f.t(name)["data"][at] = value
        return edit

    reg("v26_mx_scale_nan", "E8M0 NaN code 0xFF", poke(V26_EXPERT + "_scale", 5, 0xFF))

    def overflow(f):
        f.t(V26_EXPERT + "_scale")["data"][0] = 254  # block 0 of row 0: 2^127 times its codes
        f.t(V26_EXPERT)["data"][0] = 0x77  # two E2M1 sixes
    reg("v26_mx_scale_overflows", "overflows float32", overflow)

    # MiMo-V2.5-Pro: qkv_proj interleaved over num_key_value_heads, kept fused natively.
    def v25(edit):
        def build(dst):
            f = Folder(V25)
            edit(f)
            f.save(dst)
        return build

    def reg25(name, fragment, edit):
        case(name, fragment, file=V26_SHARD1, to_hf=NOT_NATIVE)(v25(edit))

    reg25("v25_qkv_rows_short", "the checkpoint TP degree", shrink_rows(V26_QKV, 1))
    reg25("v25_qkv_scale_rows_short", "TP shards of", shrink_rows(V26_QKV + "_scale_inv", 1))
    reg25("v25_qkv_scale_column_extra", "TP shards of", grow_cols(V26_QKV + "_scale_inv", f32(1.0)))


def register_accepted():
    def acc(name, edit):
        ACCEPTED.append((name, hf_edit(edit)))

    def grow_scale(name, rows, cols):
        def edit(f):
            t = f.t(name)
            r0, c0 = t["shape"]
            vals = [struct.unpack_from("<f", t["data"], 4 * i)[0] for i in range(r0 * c0)]
            # Extra trailing rows/columns hold values no block uses (even zero and NaN: ignored).
            extra = [0.0, math.nan, -1.0]
            grid = [[vals[r * c0 + c] if r < r0 and c < c0 else extra[(r + c) % 3] for c in range(cols)] for r in range(rows)]
            t["data"] = bytearray(b"".join(f32(x) for row in grid for x in row))
            t["shape"] = [rows, cols]
        return edit

    acc("extra_scale_rows", grow_scale(E + "0.gate_proj.weight_scale_inv", 3, 2))
    acc("extra_scale_columns", grow_scale(E + "1.down_proj.weight_scale_inv", 2, 2))
    acc("extra_scale_rows_and_columns", lambda f: [grow_scale("model.layers.0.self_attn.q_proj.weight_scale_inv", 2, 3)(f),
                                                    grow_scale("model.layers.0.mlp.down_proj.weight_scale_inv", 4, 4)(f)])

    def orphan(f):
        f.add("model.layers.0.mlp.unused_proj.weight_scale_inv", "F32", [1, 1], f32(1.0), file=HF_SHARD)
    acc("orphan_scale", orphan)

    def bf16_scale(f):
        t = f.t(E + "2.up_proj.weight_scale_inv")
        vals = [struct.unpack_from("<f", t["data"], 4 * i)[0] for i in range(len(t["data"]) // 4)]
        t["dtype"] = "BF16"
        t["data"] = bytearray(b"".join(struct.pack("<I", struct.unpack("<I", f32(v))[0] + 0x8000)[2:] for v in vals))
    acc("bf16_scale", bf16_scale)

    def single_file(dst):
        f = Folder(BASE / "hf")
        merged = Shard(next(iter(f.shards.values())).raw())
        merged.tensors = {}
        for s in f.shards.values():
            merged.tensors.update(s.tensors)
        dst.mkdir(parents=True)
        (dst / "config.json").write_text(json.dumps(f.config, indent=2) + "\n")
        (dst / "model.safetensors").write_bytes(merged.raw())
    ACCEPTED.append(("single_file", single_file))


def register_deepseek_cases():
    """The DeepSeek-V3 format: latent-attention names and shapes, shared experts, the MTP layer
    stored as layer num_hidden_layers (with routed experts), its config fields."""
    DS = BASE / "deepseek"
    L = "model.layers.1."

    def ds(edit, config_edit=None):
        def build(dst):
            f = Folder(DS)
            edit(f)
            if config_edit:
                config_edit(f.config)
            f.save(dst)
        return build

    def reg(name, fragment, edit, file=None, config_edit=None):
        # A config refusal comes first in every command; otherwise to-hf sees an HF folder.
        case(name, fragment, file=file, to_hf=None if file == "config.json" else NOT_NATIVE)(ds(edit, config_edit))

    def where(name):
        return Folder(DS).file_of(name)

    def none(f):
        pass

    def drop(*names):
        return lambda f: [f.remove(n) for n in names]

    kv_a = L + "self_attn.kv_a_proj_with_mqa.weight"
    reg("ds_kv_a_rows_short", "shape [31, 136] disagrees with config.json", shrink_rows(kv_a), file=where(kv_a))
    q_b = L + "self_attn.q_b_proj.weight"
    reg("ds_q_b_scale_rows_short", "is too small for weight [48, 40]", shrink_rows(q_b + "_scale_inv"),
        file=where(q_b + "_scale_inv"))
    norm = L + "self_attn.kv_a_layernorm.weight"
    reg("ds_kv_a_layernorm_wrong_size", "shape [23] disagrees with config.json", shrink_rows(norm), file=where(norm))
    shared = L + "mlp.shared_experts.down_proj.weight"
    reg("ds_missing_shared_expert", f"tensor '{shared}': missing: layer 1 (MoE)", drop(shared, shared + "_scale_inv"))
    reg("ds_missing_q_a_layernorm", f"tensor '{L}self_attn.q_a_layernorm.weight': missing",
        drop(L + "self_attn.q_a_layernorm.weight"))
    eh = "model.layers.2.eh_proj.weight"
    reg("ds_mtp_eh_proj_wrong_shape", "shape [135, 136] disagrees with config.json", lambda f: (
        f.t(eh).__setitem__("shape", [135, 136]), f.t(eh).__setitem__("data", f.t(eh)["data"][:135 * 136 * 2])),
        file=where(eh))
    reg("ds_mtp_missing_head", "tensor 'model.layers.2.shared_head.head.weight': missing: MTP layer 2",
        drop("model.layers.2.shared_head.head.weight"))
    mtp_e = "model.layers.2.mlp.experts.3.up_proj.weight"
    reg("ds_mtp_missing_expert", "model.layers.2.mlp.experts.3.up_proj.weight", drop(mtp_e, mtp_e + "_scale_inv"))

    def expert_in_dense_layer(f):
        src = f.t(L + "mlp.experts.0.gate_proj.weight")
        f.add("model.layers.0.mlp.experts.0.gate_proj.weight", "BF16", src["shape"],
              bytes(2 * src["shape"][0] * src["shape"][1]))
    reg("ds_expert_in_dense_layer", "which config.json makes a dense layer", expert_in_dense_layer)

    def beyond_mtp(f):
        f.add("model.layers.3.input_layernorm.weight", "BF16", [136], bytes(272))
    reg("ds_layer_beyond_mtp", "layer 3 is not below num_hidden_layers = 2", beyond_mtp)
    reg("ds_config_q_lora_rank_zero", 'config field "q_lora_rank" is 0', none, file="config.json",
        config_edit=lambda c: c.update(q_lora_rank=0))
    reg("ds_config_missing_kv_lora_rank", 'config has no "kv_lora_rank"', none, file="config.json",
        config_edit=lambda c: c.pop("kv_lora_rank"))
    reg("ds_config_moe_layer_freq_zero", 'config field "moe_layer_freq" is 0', none, file="config.json",
        config_edit=lambda c: c.update(moe_layer_freq=0))
    # q_lora_rank null: the checkpoint's q_a_proj/q_b_proj are not what the config describes.
    reg("ds_config_q_lora_rank_null", "q_lora_rank is null in config.json: the layer has one q_proj", none,
        config_edit=lambda c: c.update(q_lora_rank=None))

    def add_like(name, like):
        def edit(f):
            src = f.t(like)
            f.add(name, src["dtype"], list(src["shape"]), bytes(src["data"]), file=f.file_of(like))
        return edit
    reg("ds_q_proj_beside_q_lora", "q_lora_rank is 40 in config.json: the layer has q_a_proj and q_b_proj",
        add_like(L + "self_attn.q_proj.weight", L + "self_attn.q_a_proj.weight"), file=where(L + "self_attn.q_a_proj.weight"))
    reg("ds_dense_mlp_in_moe_layer", "layer 1 (MoE) is a MoE layer in config.json",
        add_like(L + "mlp.up_proj.weight", L + "mlp.shared_experts.up_proj.weight"),
        file=where(L + "mlp.shared_experts.up_proj.weight"))
    reg("ds_shared_expert_in_dense_layer", "layer 0 (dense) has no shared experts in config.json",
        add_like("model.layers.0.mlp.shared_experts.up_proj.weight", "model.layers.0.mlp.up_proj.weight"),
        file=where("model.layers.0.mlp.up_proj.weight"))
    reg("ds_moe_layer_without_experts", "tensor 'model.layers.1.mlp.experts.0.gate_proj.weight': missing: layer 1 (MoE)",
        lambda f: [f.remove(n) for n in list(f.index["weight_map"]) if n.startswith(L + "mlp.experts.")])


def register_hf_moe_cases():
    """Qwen3-MoE (FP8 micro), GLM-4.5 (BF16 micro, an MTP layer 2) and MiniMax-M2 (FP8 micro): q/k
    norms, attention biases, router bias, shared experts, MTP layers and renamed MoE blocks against the
    config; their config fields."""

    def family(base):
        def reg(name, fragment, edit, file=None, config_edit=None):
            def build(dst):
                f = Folder(BASE / base)
                edit(f)
                if config_edit:
                    config_edit(f.config)
                f.save(dst)
            case(name, fragment, file=file, to_hf=None if file == "config.json" else NOT_NATIVE)(build)

        def where(name):
            return Folder(BASE / base).file_of(name)

        def add_like(name, like):
            def edit(f):
                src = f.t(like)
                f.add(name, src["dtype"], list(src["shape"]), bytes(src["data"]), file=f.file_of(like))
            return edit
        return reg, where, add_like

    def none(f):
        pass

    def drop(*names):
        return lambda f: [f.remove(n) for n in names]

    reg, where, add_like = family("qwen3_moe")
    L = "model.layers.1."
    qn = L + "self_attn.q_norm.weight"
    reg("qwen3_q_norm_wrong_size", "shape [71] disagrees with config.json", shrink_rows(qn), file=where(qn))
    ob = L + "self_attn.o_proj.bias"
    reg("qwen3_o_proj_bias_wrong_size", "shape [135] disagrees with config.json", shrink_rows(ob), file=where(ob))
    kn = L + "self_attn.k_norm.weight"
    reg("qwen3_missing_k_norm", f"tensor '{kn}': missing: layer 1 (MoE)", drop(kn))
    ex = L + "mlp.experts.2.down_proj.weight_scale_inv"
    reg("qwen3_expert_scale_rows_short", "is too small for weight [136, 24]", shrink_rows(ex), file=where(ex))
    reg("qwen3_router_bias", "a Qwen3-MoE router has no e_score_correction_bias",
        add_like(L + "mlp.gate.e_score_correction_bias", L + "self_attn.k_proj.bias"),
        file=where(L + "self_attn.k_proj.bias"))
    reg("qwen3_mtp_tensor_in_decoder_layer", "eh_proj.weight is an MTP layer's tensor",
        add_like(L + "eh_proj.weight", L + "mlp.gate.weight"), file=where(L + "mlp.gate.weight"))
    reg("qwen3_dense_mlp_in_moe_layer", "layer 1 (MoE) is a MoE layer in config.json",
        add_like(L + "mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight"),
        file=where("model.layers.0.mlp.up_proj.weight"))
    reg("qwen3_config_attention_bias_false", "attention_bias is false in config.json", none,
        file=where("model.layers.0.self_attn.k_proj.bias"), config_edit=lambda c: c.update(attention_bias=False))
    reg("qwen3_config_decoder_sparse_step_zero", 'config field "decoder_sparse_step" is 0', none, file="config.json",
        config_edit=lambda c: c.update(decoder_sparse_step=0))
    reg("qwen3_config_mlp_only_layers_not_a_list", 'config field "mlp_only_layers" is 0', none, file="config.json",
        config_edit=lambda c: c.update(mlp_only_layers=0))
    reg("qwen3_config_kv_heads_not_a_divisor", "num_attention_heads = 2 is not a multiple of num_key_value_heads = 3",
        none, file="config.json", config_edit=lambda c: c.update(num_key_value_heads=3))

    reg, where, add_like = family("glm4_moe")
    reg("glm4_o_proj_bias", "GLM-4.5 attention has no o_proj bias",
        add_like(L + "self_attn.o_proj.bias", "model.layers.1.input_layernorm.weight"),
        file=where("model.layers.1.input_layernorm.weight"))
    sh = L + "mlp.shared_experts.gate_proj.weight"
    reg("glm4_missing_shared_expert", f"tensor '{sh}': missing: layer 1 (MoE)", drop(sh))
    rb = L + "mlp.gate.e_score_correction_bias"
    reg("glm4_router_bias_wrong_size", "shape [3] disagrees with config.json", shrink_rows(rb), file=where(rb))
    eh = "model.layers.2.eh_proj.weight"
    reg("glm4_mtp_missing_eh_proj", f"tensor '{eh}': missing: MTP layer 2", drop(eh))
    reg("glm4_mtp_missing_expert", "model.layers.2.mlp.experts.3.up_proj.weight",
        drop("model.layers.2.mlp.experts.3.up_proj.weight"))
    reg("glm4_layer_beyond_mtp", "layer 3 is not below num_hidden_layers = 2",
        add_like("model.layers.3.input_layernorm.weight", "model.layers.1.input_layernorm.weight"),
        file=where("model.layers.1.input_layernorm.weight"))
    reg("glm4_config_no_qk_norm", "no q/k norm (use_qk_norm is false in config.json)", none,
        file=where("model.layers.0.self_attn.k_norm.weight"), config_edit=lambda c: c.update(use_qk_norm=False))
    reg("glm4_config_compressed_tensors", "quantization_config is compressed-tensors", none, file="config.json",
        config_edit=lambda c: c.update(quantization_config={"quant_method": "compressed-tensors"}))

    # MiniMax-M2 (FP8 micro, one MoE layer): the MoE block under block_sparse_moe, full-width q/k norms.
    reg, where, add_like = family("minimax_m2")
    M = "model.layers.0."
    qn = M + "self_attn.q_norm.weight"
    reg("minimax_q_norm_per_head", "shape [72] disagrees with config.json", shrink_rows(qn, 72), file=where(qn))
    gate = M + "block_sparse_moe.gate.weight"
    reg("minimax_missing_router", f"tensor '{gate}': missing: layer 0 (MoE)", drop(gate))
    rb = M + "block_sparse_moe.e_score_correction_bias"
    reg("minimax_missing_router_bias", f"tensor '{rb}': missing: layer 0 (MoE)", drop(rb))
    w3 = M + "block_sparse_moe.experts.2.w3.weight"
    reg("minimax_missing_expert", w3, drop(w3, w3 + "_scale_inv"))
    reg("minimax_expert_under_mlp", "model.layers.0.mlp.experts.0.gate_proj.weight",
        add_like(M + "mlp.experts.0.gate_proj.weight", M + "block_sparse_moe.experts.0.w1.weight"),
        file=where(M + "block_sparse_moe.experts.0.w1.weight"))
    w2 = M + "block_sparse_moe.experts.1.w2.weight_scale_inv"
    reg("minimax_expert_scale_rows_short", "is too small for weight [136, 24]", shrink_rows(w2), file=where(w2))
    kn = M + "self_attn.k_norm.weight"
    reg("minimax_config_no_qk_norm", "no q/k norm (use_qk_norm is false in config.json)", none,
        file=where(kn), config_edit=lambda c: c.update(use_qk_norm=False))
    reg("minimax_config_missing_experts", 'config has no "num_local_experts"', none, file="config.json",
        config_edit=lambda c: c.pop("num_local_experts"))

    # gpt-oss (micro: hidden 32, expert width 64, 4 experts, one layer): stacked MXFP4 experts with their
    # biases, the router under mlp.router, attention sinks; its MXFP4 quantization_config.
    reg, where, add_like = family("gpt_oss")
    E = M + "mlp.experts."
    gu = E + "gate_up_proj_blocks"
    reg("gpt_oss_blocks_missing_an_expert", "is not one of n_routed_experts = 4 experts", shrink_rows(gu), file=where(gu))
    dn = E + "down_proj_scales"
    reg("gpt_oss_missing_scales", "without its E8M0 scales " + dn + "[0]", drop(dn))
    reg("gpt_oss_missing_blocks", "MXFP4 expert scale without its weight " + E + "down_proj_blocks[0]",
        drop(E + "down_proj_blocks"))
    gb = E + "gate_up_proj_bias"
    reg("gpt_oss_expert_bias_missing_an_expert", "expert bias BF16 [3, 128] disagrees with config.json",
        shrink_rows(gb), file=where(gb))
    reg("gpt_oss_missing_expert_bias", f"tensor '{E}down_proj_bias': missing: layer 0 (MoE)", drop(E + "down_proj_bias"))
    rb = M + "mlp.router.bias"
    reg("gpt_oss_missing_router_bias", f"tensor '{rb}': missing: layer 0 (MoE)", drop(rb))
    sk = M + "self_attn.sinks"
    reg("gpt_oss_missing_sinks", f"tensor '{sk}': missing: layer 0 (MoE)", drop(sk))
    reg("gpt_oss_sinks_wrong_size", "shape [1] disagrees with config.json", shrink_rows(sk), file=where(sk))

    def poke(name, at, value):
        def edit(f):
            f.t(name)["data"][at] = value
        return edit

    reg("gpt_oss_scale_nan", "E8M0 NaN code 0xFF", poke(E + "gate_up_proj_scales", 5, 0xFF), file=where(gu))

    def overflow(f):
        f.t(E + "down_proj_scales")["data"][0] = 254  # expert 0, row 0's group: 2^127 times its codes
        f.t(E + "down_proj_blocks")["data"][0] = 0x77  # two E2M1 sixes
    reg("gpt_oss_scale_overflows", "overflows float32", overflow, file=where(gu))
    reg("gpt_oss_config_fp8_quantization", 'gpt_oss quantization_config is {"quant_method":"fp8"', none,
        file="config.json", config_edit=lambda c: c.update(quantization_config={"quant_method": "fp8"}))
    reg("gpt_oss_config_hidden_not_a_group_multiple", "are not both multiples of 32", none, file="config.json",
        config_edit=lambda c: c.update(hidden_size=40))
    reg("gpt_oss_config_layer_types_short", 'config field "layer_types" is []', none, file="config.json",
        config_edit=lambda c: c.update(layer_types=[]))


def run(cli, *args):
    subprocess.run([str(cli), *map(str, args)], check=True, stdout=subprocess.DEVNULL)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_malformed_corpus.py PATH/TO/moeckpt")
    cli = pathlib.Path(sys.argv[1]).resolve()
    for d in (BAD, GOOD, BASE):
        if d.exists():
            shutil.rmtree(d)
    run(cli, "synth", BASE / "hf", "--preset", "micro", "--seed", "1")
    run(cli, "synth", BASE / "deepseek", "--preset", "deepseek-v3-micro", "--seed", "1")
    run(cli, "synth", BASE / "qwen3_moe", "--preset", "qwen3-moe-micro-fp8", "--seed", "1")
    run(cli, "synth", BASE / "glm4_moe", "--preset", "glm4-moe-micro", "--seed", "1")
    run(cli, "synth", BASE / "minimax_m2", "--preset", "minimax-m2-micro", "--seed", "1")
    run(cli, "synth", BASE / "gpt_oss", "--preset", "gpt-oss-micro", "--seed", "1")
    # Several shards, so that a case edits one of them (git stores the others once).
    run(cli, "from-hf", BASE / "hf", BASE / "native", "--quiet", "--shard-size", "60000")
    with tempfile.TemporaryDirectory() as tmp:
        for w, r in ((2, 0), (3, 0), (3, 1), (3, 2)):
            run(cli, "from-hf", BASE / "hf", pathlib.Path(tmp) / f"ep{w}_rank{r}", "--ep-size", w, "--ep-rank", r, "--quiet")
        BASE_RANKS = BASE / "ranks"
        shutil.copytree(tmp, BASE_RANKS)
    register_format_cases()
    register_index_cases()
    register_config_cases()
    register_hf_semantic_cases()
    register_native_cases()
    register_v26_cases()
    register_deepseek_cases()
    register_hf_moe_cases()
    register_accepted()
    for name, layout, build, commands, files, ranks in CASES:
        d = BAD / name
        d.parent.mkdir(parents=True, exist_ok=True)
        build(d)
        (d / "expect.json").write_text(json.dumps(
            {"layout": layout, "ranks": ranks,
             "commands": {c: {"error": f, "file": files[c]} for c, f in commands.items()}}, indent=2) + "\n")
    for name, build in ACCEPTED:
        d = GOOD / name
        d.parent.mkdir(parents=True, exist_ok=True)
        build(d)
    write_fuzz_seeds()
    print(f"wrote {len(CASES)} malformed and {len(ACCEPTED)} accepted cases under {DATA}")


def write_fuzz_seeds():
    """Seeds of fuzz/fuzz_from_hf.cpp: records [u8 file id][u32 length][bytes] replacing files of
    the micro base (which the fuzzer synthesizes itself); id | 0x80 deletes the file."""
    if SEEDS.exists():
        shutil.rmtree(SEEDS)
    SEEDS.mkdir(parents=True)

    def record(i, content):
        return bytes([i]) + struct.pack("<I", len(content)) + content

    seeds = {"empty": b"", "no_config": b"\x80", "no_index": b"\x81"}
    for i, name in enumerate(FUZZ_FILES):
        seeds[f"base_{i}"] = record(i, (BASE / "hf" / name).read_bytes())
    cases = {}
    for case_name in sorted(p.name for p in BAD.iterdir()):
        d = BAD / case_name
        changed = b""
        for i, name in enumerate(FUZZ_FILES):
            p = d / name
            if not p.exists():
                changed += bytes([0x80 | i])
            elif p.read_bytes() != (BASE / "hf" / name).read_bytes():
                changed += record(i, p.read_bytes())
        if changed and len(changed) <= MAX_SEED and (d / "expect.json").exists() and \
                json.loads((d / "expect.json").read_text())["layout"] == "hf":
            cases[case_name] = changed
    # Kept small: the base files plus the smallest variants of a few kinds of defect.
    by_size = sorted(cases, key=lambda n: (len(cases[n]), n))
    for name in by_size[:12]:
        seeds[name] = cases[name]
    # ... and defects in tensor data: those in the small last shard (the late scales of odd experts).
    for name in [n for n in by_size if 6000 < len(cases[n]) <= 20000][:8]:
        seeds[name] = cases[name]
    for name, content in seeds.items():
        (SEEDS / name).write_bytes(content)


if __name__ == "__main__":
    main()
