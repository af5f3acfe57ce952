#!/usr/bin/env python3
"""Condenses a tools/make_goldens.py OUT_DIR into one small, committable JSON (standard library only).

    python3 tools/digest_goldens.py OUT_DIR DEST.json [--hf-dir DIR] [--root DIR]

DEST.json:
  versions       python / torch / safetensors / nemo_automodel / transformers / cpu_capability / ep_mode of the run
  command        the make_goldens command line (paths under --root, default the current directory, made relative)
  input          {tensor: {dtype, shape, sha256}} of the HF input checkpoint (GOLDENS.json's hf_dir, or --hf-dir)
  outputs        {"<output file stem>": {tensor: {dtype, shape, sha256}}}, one entry per *.safetensors in OUT_DIR;
                 tensors listed in the order the adapter emitted them (GOLDENS.json "order"), else file order
  to_hf_exclude  to_hf_exclude.json verbatim: {regex: {"quantization=True": [keys], "quantization=False": [keys]}}
  special        GOLDENS.json "special_values" (BF16 bit patterns planted into the to_hf_special input and their flat
                 positions per native tensor), plus, per tensor, where each planted value lands in to_hf_special
                 ("hf_key", "hf_flat_index") and the bytes found there ("to_hf_special", hex, little-endian value)
  errors         {"<stem>": "ExceptionType: message"} for outputs the oracle refused (to_hf of an uneven EP shard)
  experts        {"<from_hf stem>": [first, end)} expert range of each EP rank
  nan            {"<stem or 'input'>": {tensor: {"flat_index": [...], "bits": [hex...]}}}: every NaN element (their
                 bit patterns depend on the CPU kernel: see versions.cpu_capability and tools/ORACLE_NOTES.md)

sha256 is over the tensor's raw bytes exactly as stored in the safetensors file (little-endian).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import struct
import sys

DTYPE_SIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
              "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def read_safetensors(path: str) -> tuple[dict, bytes]:
    """(header without __metadata__, data section)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack_from("<Q", blob, 0)
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    header.pop("__metadata__", None)
    return header, blob[8 + n:]


def tensor_data(header: dict, data: bytes, name: str) -> bytes:
    b, e = header[name]["data_offsets"]
    return data[b:e]


def digest_file(path: str, order: list[str] | None = None) -> tuple[dict, dict]:
    header, data = read_safetensors(path)
    names = sorted(header, key=lambda k: header[k]["data_offsets"][0])
    if order is not None:
        assert sorted(order) == sorted(names), f"{path}: GOLDENS.json order does not match the file's tensors"
        names = list(order)
    out, nans = {}, {}
    for k in names:
        t = header[k]
        raw = tensor_data(header, data, k)
        out[k] = {"dtype": t["dtype"], "shape": t["shape"], "sha256": hashlib.sha256(raw).hexdigest()}
        found = find_nans(t["dtype"], raw)
        if found:
            nans[k] = found
    return out, nans


def find_nans(dtype: str, raw: bytes) -> dict | None:
    """Flat positions and bit patterns of NaN elements (F8_E4M3, BF16, F16, F32)."""
    if dtype == "F8_E4M3":
        pos = [m.start() for m in re.finditer(rb"[\x7f\xff]", raw)]
        return {"flat_index": pos, "bits": [f"0x{raw[p]:02X}" for p in pos]} if pos else None
    if dtype in ("BF16", "F16", "F32"):
        size = DTYPE_SIZE[dtype]
        hi = raw[size - 1::size]  # byte holding the sign and the top exponent bits
        cand = [m.start() for m in re.finditer(rb"[\x7f\xff]", hi)]
        pos, bits = [], []
        for i in cand:
            v = int.from_bytes(raw[i * size:(i + 1) * size], "little")
            if dtype == "BF16":
                is_nan = (v & 0x7F80) == 0x7F80 and (v & 0x007F) != 0
            elif dtype == "F16":
                is_nan = (v & 0x7C00) == 0x7C00 and (v & 0x03FF) != 0
            else:
                is_nan = (v & 0x7F800000) == 0x7F800000 and (v & 0x007FFFFF) != 0
            if is_nan:
                pos.append(i)
                bits.append(f"0x{v:0{2 * size}X}")
        return {"flat_index": pos, "bits": bits} if pos else None
    return None


def hf_input_files(hf_dir: str) -> list[str]:
    index = os.path.join(hf_dir, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            return sorted(set(json.load(f)["weight_map"].values()))
    if os.path.isfile(os.path.join(hf_dir, "model.safetensors")):
        return ["model.safetensors"]
    return sorted(n for n in os.listdir(hf_dir) if n.endswith(".safetensors"))


def special_to_hf_positions(native_key: str, shape: list[int], flat: int, cfg: dict) -> tuple:
    """Where native element `flat` of `native_key` lands in to_hf (EP1 input: expert ids start at 0); (None, None)
    where it lands nowhere (gpt-oss's experts: its quantized to_hf writes MXFP4 placeholders)."""
    m = re.search(r"layers\.(\d+)\.mlp\.experts\.(gate_and_up_projs|down_projs)$", native_key)
    if not m:
        return native_key, flat
    layer, kind = m.group(1), m.group(2)
    prefix = "model." if native_key.startswith("model.") else ""
    if cfg.get("model_type") == "gpt_oss":  # to_hf(quantization=True) writes placeholders: the values are gone
        return None, None
    if cfg.get("model_type") == "minimax_m2":  # block_sparse_moe.experts.E.w1 (gate) / w3 (up) / w2 (down)
        base, names = f"{prefix}layers.{layer}.block_sparse_moe.experts", ("w1", "w3", "w2")
        ie = int(cfg["intermediate_size"])
    else:
        base, names = f"{prefix}layers.{layer}.mlp.experts", ("gate_proj", "up_proj", "down_proj")
        ie = int(cfg["moe_intermediate_size"])
    if kind == "gate_and_up_projs":  # [n, D, W]: gate = w[:, :Ie]^T, up = w[:, Ie:]^T
        _, d_model, width = shape
        e, r = divmod(flat, d_model * width)
        d, j = divmod(r, width)
        if j < ie:
            return f"{base}.{e}.{names[0]}.weight", j * d_model + d
        return f"{base}.{e}.{names[1]}.weight", (j - ie) * d_model + d
    _, rows, d_model = shape  # down_projs [n, Ie, D] -> down_proj [D, Ie]
    e, r = divmod(flat, rows * d_model)
    i, d = divmod(r, d_model)
    return f"{base}.{e}.{names[2]}.weight", d * rows + i


def relativize(text: str, root: str) -> str:
    root = os.path.abspath(root).rstrip("/") + "/"
    return text.replace(root, "")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("dest")
    ap.add_argument("--hf-dir", help="HF input folder (default: GOLDENS.json hf_dir)")
    ap.add_argument("--root", default=os.getcwd(), help="prefix stripped from paths in `command` (default: cwd)")
    args = ap.parse_args(argv)

    with open(os.path.join(args.out_dir, "GOLDENS.json"), encoding="utf-8") as f:
        g = json.load(f)
    hf_dir = args.hf_dir or g["hf_dir"]
    with open(os.path.join(hf_dir, "config.json"), encoding="utf-8") as f:
        cfg = json.load(f)

    result: dict = {
        "versions": {k: g[k] for k in ("python", "torch", "safetensors", "nemo_automodel", "transformers",
                                       "cpu_capability", "ep_mode") if k in g},
        "command": relativize(g["command"], args.root),
        "input": {},
        "outputs": {},
        "to_hf_exclude": None,
        "special": None,
        "errors": {},
        "experts": {},
        "nan": {},
    }

    in_nans = {}
    for name in hf_input_files(hf_dir):
        d, n = digest_file(os.path.join(hf_dir, name))
        for k in d:
            assert k not in result["input"], f"duplicate input tensor {k}"
        result["input"].update(d)
        in_nans.update(n)
    result["input"] = dict(sorted(result["input"].items()))
    if in_nans:
        result["nan"]["input"] = dict(sorted(in_nans.items()))

    files = g.get("files", {})
    stems = sorted(n[: -len(".safetensors")] for n in os.listdir(args.out_dir) if n.endswith(".safetensors"))
    for stem in stems:
        info = files.get(stem + ".safetensors", {})
        d, n = digest_file(os.path.join(args.out_dir, stem + ".safetensors"), info.get("order"))
        result["outputs"][stem] = d
        if n:
            result["nan"][stem] = n
        if "experts" in info:
            result["experts"][stem] = info["experts"]
    for fname, info in sorted(files.items()):
        if "error" in info:
            result["errors"][fname[: -len(".safetensors")]] = info["error"]

    with open(os.path.join(args.out_dir, "to_hf_exclude.json"), encoding="utf-8") as f:
        result["to_hf_exclude"] = json.load(f)

    special = g.get("special_values")
    if special is not None:
        special = json.loads(json.dumps(special))  # deep copy
        sp_path = os.path.join(args.out_dir, "to_hf_special.safetensors")
        header, data = read_safetensors(sp_path)
        for key, where in special["tensors"].items():
            hf_keys, hf_flat, found = [], [], []
            for flat in where["flat_index"]:
                hk, hf_i = special_to_hf_positions(key, where["shape"], flat, cfg)
                if hk is None:
                    hf_keys.append(None)
                    hf_flat.append(None)
                    found.append(None)
                    continue
                size = DTYPE_SIZE[header[hk]["dtype"]]
                raw = tensor_data(header, data, hk)[hf_i * size:(hf_i + 1) * size]
                hf_keys.append(hk)
                hf_flat.append(hf_i)
                found.append(f"0x{int.from_bytes(raw, 'little'):0{2 * size}X}")
            where["hf_key"] = hf_keys
            where["hf_flat_index"] = hf_flat
            where["to_hf_special"] = found
        result["special"] = special

    text = dumps(result)
    os.makedirs(os.path.dirname(os.path.abspath(args.dest)), exist_ok=True)
    with open(args.dest, "w", encoding="utf-8") as f:
        f.write(text)
    n_out = sum(len(v) for v in result["outputs"].values())
    print(f"wrote {args.dest}: {len(result['input'])} input tensors, {len(result['outputs'])} outputs "
          f"({n_out} tensors), {len(text)} bytes")
    return 0


def dumps(obj) -> str:
    """Indented JSON, but every innermost dict / list of scalars on one line (small diffs, small files)."""

    def leaf(x) -> bool:
        if isinstance(x, dict):
            return all(not isinstance(v, (dict, list)) or (isinstance(v, list) and all(
                not isinstance(i, (dict, list)) for i in v)) for v in x.values())
        if isinstance(x, list):
            return all(not isinstance(i, (dict, list)) for i in x)
        return True

    def enc(x, ind: int) -> str:
        if leaf(x):
            return json.dumps(x, separators=(", ", ": "))
        pad, pad1 = " " * ind, " " * (ind + 1)
        if isinstance(x, dict):
            items = [f"{pad1}{json.dumps(k)}: {enc(v, ind + 1)}" for k, v in x.items()]
            return "{\n" + ",\n".join(items) + "\n" + pad + "}" if items else "{}"
        items = [f"{pad1}{enc(v, ind + 1)}" for v in x]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]" if items else "[]"

    return enc(obj, 0) + "\n"


if __name__ == "__main__":
    sys.exit(main())
