#!/usr/bin/env python3
"""Regenerates tests/data/malformed/: one checkpoint folder per rule a reader must enforce.

Each case folder holds the files of a (broken) checkpoint and `expect.txt`: the fragment the error
message must contain. Pure standard library; run from the repository root.
"""
import json
import pathlib
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "malformed"


def st(header, data=b""):
    h = header if isinstance(header, bytes) else header.encode()
    return struct.pack("<Q", len(h)) + h + data


def hdr(tensors, metadata=None):
    d = {}
    if metadata is not None:
        d["__metadata__"] = metadata
    d.update(tensors)
    return json.dumps(d)


def t(dtype, shape, begin, end):
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


GOOD_A = st(hdr({"x": t("F32", [1], 0, 4)}), b"\0" * 4)
GOOD_B = st(hdr({"y": t("BF16", [1], 0, 2)}), b"\0" * 2)

CASES = {}


def single(name, data, expect):
    CASES[name] = ({"model.safetensors": data}, expect)


def indexed(name, index, expect, extra=None):
    files = {"a.safetensors": GOOD_A, "b.safetensors": GOOD_B,
             "model.safetensors.index.json": index if isinstance(index, bytes) else index.encode()}
    files.update(extra or {})
    CASES[name] = (files, expect)


# safetensors rules (the Rust reference's, plus duplicate names)
single("file_too_short", b"\x08\0\0\0", "too short")
single("header_length_too_large", struct.pack("<Q", 100_000_001) + b"{}", "too large")
single("header_past_end_of_file", struct.pack("<Q", 64) + b"{}      ", "runs past the end")
single("header_not_utf8", st(b'{"\xff\xfe":' + json.dumps(t("U8", [1], 0, 1)).encode() + b"}", b"\0"), "UTF-8")
single("header_not_json", st('{"x": {"dtype": "U8",'), "not valid JSON")
single("header_not_an_object", st("[1, 2, 3]"), "not a JSON object")
single("metadata_nested", st(hdr({}, {"a": {"b": "c"}})), "__metadata__")
single("metadata_value_not_string", st(hdr({}, {"a": 1})), "__metadata__")
single("unknown_dtype", st(hdr({"x": t("F8_E4M3FN", [1], 0, 1)}), b"\0"), "unknown dtype")
single("negative_shape", st(hdr({"x": t("U8", [-1], 0, 1)}), b"\0"), "not a non-negative integer")
single("float_shape", st('{"x":{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}}', b"\0"), "not a non-negative integer")
single("negative_offset", st(hdr({"x": t("U8", [1], -1, 0)}), b"\0"), "non-negative integers")
single("float_offset", st('{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1.0]}}', b"\0"), "non-negative integers")
single("offsets_not_a_pair", st('{"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}', b"\0"), "not a pair")
single("offsets_overlap", st(hdr({"x": t("U8", [4], 0, 4), "y": t("U8", [4], 2, 6)}), b"\0" * 6), "overlap")
single("offsets_hole", st(hdr({"x": t("U8", [4], 0, 4), "y": t("U8", [2], 6, 8)}), b"\0" * 8), "hole")
single("offsets_not_from_zero", st(hdr({"x": t("U8", [4], 4, 8)}), b"\0" * 8), "hole")
single("offsets_reversed", st(hdr({"x": t("U8", [0], 0, 0), "y": t("U8", [4], 4, 0)}), b"\0" * 4), "reversed")
single("size_mismatch", st(hdr({"x": t("F32", [2, 2], 0, 12)}), b"\0" * 12), "needs 16")
single("shape_product_overflows", st(hdr({"x": t("U8", [2**32, 2**32], 0, 0)})), "overflows")
single("byte_size_wraps_to_zero", st(hdr({"x": t("F32", [2**62], 0, 0)})), "overflows")
single("trailing_bytes", st(hdr({"x": t("U8", [2], 0, 2)}), b"\0" * 3), "trailing bytes")
single("truncated_data", st(hdr({"x": t("U8", [8], 0, 8)}), b"\0" * 3), "truncated")
single("duplicate_tensor_name", st('{"x":' + json.dumps(t("U8", [1], 0, 1)) + ',"x":' + json.dumps(t("U8", [1], 1, 2)) + "}", b"\0\0"), "duplicate key")
single("missing_dtype", st('{"x":{"shape":[1],"data_offsets":[0,1]}}', b"\0"), "no \"dtype\"")
single("sub_byte_remainder", st(hdr({"x": t("F4", [3], 0, 2)}), b"\0\0"), "sub-byte")

# sharded checkpoints: the index and the shards must agree; names stay inside the folder
WM = {"x": "a.safetensors", "y": "b.safetensors"}
indexed("index_missing_shard", json.dumps({"weight_map": {"x": "a.safetensors", "y": "c.safetensors"}}), "cannot open")
indexed("index_path_traversal", json.dumps({"weight_map": {"x": "a.safetensors", "y": "../b.safetensors"}}), "not a plain file name")
indexed("index_absolute_path", json.dumps({"weight_map": {"x": "a.safetensors", "y": "/etc/passwd"}}), "not a plain file name")
indexed("index_subdirectory", json.dumps({"weight_map": {"x": "a.safetensors", "y": "sub/b.safetensors"}}), "not a plain file name")
indexed("index_tensor_not_in_shard", json.dumps({"weight_map": dict(WM, z="b.safetensors")}), "lacks it")
indexed("index_wrong_shard", json.dumps({"weight_map": {"x": "b.safetensors", "y": "b.safetensors", "w": "a.safetensors"}}), "lacks it")
indexed("index_shard_tensor_not_in_index",
        json.dumps({"weight_map": dict(WM, p="c.safetensors")}), "not in the index",
        extra={"c.safetensors": st(hdr({"p": t("U8", [1], 0, 1), "q": t("U8", [1], 1, 2)}), b"\0\0")})
indexed("index_not_json", '{"weight_map": {"x": "a.safetensors",', "not valid JSON")
indexed("index_total_size_wrong", json.dumps({"metadata": {"total_size": 7}, "weight_map": WM}), "total_size")
indexed("index_no_weight_map", json.dumps({"metadata": {"total_size": 6}}), "no \"weight_map\"")
indexed("index_duplicate_key", '{"weight_map": {"x": "a.safetensors", "y": "b.safetensors", "x": "b.safetensors"}}', "duplicate key")
indexed("index_invalid_shard", json.dumps({"weight_map": WM}), "too short",
        extra={"b.safetensors": b"\1\2"})
CASES["no_checkpoint"] = ({"README": b"nothing here\n"}, "no checkpoint here")


def main():
    if ROOT.exists():
        shutil.rmtree(ROOT)
    for name, (files, expect) in CASES.items():
        d = ROOT / name
        d.mkdir(parents=True)
        for fname, data in files.items():
            (d / fname).write_bytes(data)
        (d / "expect.txt").write_text(expect + "\n")
    print(f"wrote {len(CASES)} cases to {ROOT}")


if __name__ == "__main__":
    main()
