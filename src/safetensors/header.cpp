// Header parsing and validation, rule for rule as huggingface/safetensors (tensor.rs) accepts and
// refuses, plus one stricter rule: duplicate tensor names are refused instead of "last one wins".
#include <algorithm>
#include <cstring>
#include <limits>

#include "core/strict_json.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"
#include "safetensors/utf8.hpp"

namespace moeckpt {
namespace {

using nlohmann::json;

// serde's usize: a JSON integer >= 0 that fits in 64 bits. Floats (even 1.0) are refused.
bool as_u64(const json& v, uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer()) {
    int64_t s = v.get<int64_t>();
    if (s < 0) return false;
    out = static_cast<uint64_t>(s);
    return true;
  }
  return false;
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t& out) {
  return !__builtin_mul_overflow(a, b, &out);
}

TensorInfo parse_tensor_info(const std::string& name, const json& v, const std::string& file) {
  if (!v.is_object())
    fail(ErrorKind::kMalformedFile, file, name, "header entry is not an object",
         "{\"dtype\": ..., \"shape\": [...], \"data_offsets\": [begin, end]}");
  TensorInfo info;
  info.name = name;
  auto dt = v.find("dtype");
  if (dt == v.end()) fail(ErrorKind::kMalformedFile, file, name, "header entry has no \"dtype\"");
  if (!dt->is_string()) fail(ErrorKind::kMalformedFile, file, name, "\"dtype\" is not a string");
  auto parsed = parse_dtype(dt->get_ref<const std::string&>());
  if (!parsed)
    fail(ErrorKind::kMalformedFile, file, name, "unknown dtype \"" + dt->get<std::string>() + "\"",
         "one of BOOL, F4, F6_E2M3, F6_E3M2, U8, I8, F8_E5M2, F8_E4M3, F8_E8M0, I16, U16, F16, "
         "BF16, I32, U32, F32, C64, F64, I64, U64");
  info.dtype = *parsed;

  auto sh = v.find("shape");
  if (sh == v.end()) fail(ErrorKind::kMalformedFile, file, name, "header entry has no \"shape\"");
  if (!sh->is_array()) fail(ErrorKind::kMalformedFile, file, name, "\"shape\" is not an array");
  for (const auto& d : *sh) {
    uint64_t x = 0;
    if (!as_u64(d, x))
      fail(ErrorKind::kMalformedFile, file, name,
           "shape entry " + d.dump() + " is not a non-negative integer");
    info.shape.push_back(x);
  }

  auto off = v.find("data_offsets");
  if (off == v.end())
    fail(ErrorKind::kMalformedFile, file, name, "header entry has no \"data_offsets\"");
  if (!off->is_array() || off->size() != 2)
    fail(ErrorKind::kMalformedFile, file, name, "\"data_offsets\" is not a pair", "[begin, end]");
  if (!as_u64((*off)[0], info.begin) || !as_u64((*off)[1], info.end))
    fail(ErrorKind::kMalformedFile, file, name,
         "\"data_offsets\" " + off->dump() + " are not non-negative integers");
  return info;
}

}  // namespace

std::string format_shape(const std::vector<uint64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

uint64_t TensorInfo::numel() const noexcept {
  uint64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

uint64_t Header::header_length(std::span<const uint8_t, 8> prefix, uint64_t file_size,
                               const std::string& file) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | prefix[static_cast<size_t>(i)];
  if (n > kMaxHeaderBytes)
    fail(ErrorKind::kMalformedFile, file, "",
         "header length " + std::to_string(n) + " is too large",
         "at most " + std::to_string(kMaxHeaderBytes));
  if (n > file_size - 8)
    fail(ErrorKind::kMalformedFile, file, "",
         "header of " + std::to_string(n) + " bytes runs past the end of the file (" +
             std::to_string(file_size) + " bytes)");
  return n;
}

Header Header::parse(std::span<const uint8_t> text, uint64_t data_size, const std::string& file) {
  if (!is_valid_utf8(text)) fail(ErrorKind::kMalformedFile, file, "", "header is not valid UTF-8");
  json doc = parse_strict_json(
      std::string_view(reinterpret_cast<const char*>(text.data()), text.size()), file, "header");
  if (!doc.is_object()) fail(ErrorKind::kMalformedFile, file, "", "header is not a JSON object");

  Header h;
  h.json_length_ = text.size();
  h.data_size_ = data_size;
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    if (it.key() == "__metadata__") {
      // serde reads an Option<HashMap<String, String>>: null means "no metadata".
      if (it->is_null()) continue;
      if (!it->is_object())
        fail(ErrorKind::kMalformedFile, file, "", "\"__metadata__\" is not an object",
             "a flat string-to-string map");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string())
          fail(ErrorKind::kMalformedFile, file, "",
               "\"__metadata__\" value of \"" + m.key() + "\" is not a string",
               "a flat string-to-string map");
        h.metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    h.tensors_.push_back(parse_tensor_info(it.key(), *it, file));
  }

  std::stable_sort(h.tensors_.begin(), h.tensors_.end(), [](const auto& a, const auto& b) {
    return std::tie(a.begin, a.end) < std::tie(b.begin, b.end);
  });
  uint64_t cursor = 0;
  for (const auto& t : h.tensors_) {
    if (t.begin != cursor || t.end < t.begin) {
      if (t.end < t.begin)
        fail(ErrorKind::kMalformedFile, file, t.name,
             "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) +
                 "] are reversed");
      fail(ErrorKind::kMalformedFile, file, t.name,
           "data_offsets [" + std::to_string(t.begin) + ", " + std::to_string(t.end) + "] " +
               (t.begin < cursor ? "overlap the previous tensor" : "leave a hole before it"),
           "to start at byte " + std::to_string(cursor) + " of the data area");
    }
    cursor = t.end;
    uint64_t numel = 1;
    for (auto d : t.shape) {
      // A dimension beyond 2^48 is no real tensor (even with a zero elsewhere in the shape), and
      // would overflow the offset arithmetic of any conversion of it.
      if (d > kMaxDimension)
        fail(ErrorKind::kMalformedFile, file, t.name,
             "shape " + format_shape(t.shape) + " has a dimension larger than any tensor",
             "dimensions of at most 2^48");
      if (!checked_mul(numel, d, numel))
        fail(ErrorKind::kMalformedFile, file, t.name, "shape element count overflows 64 bits");
    }
    uint64_t bits = 0;
    if (!checked_mul(numel, dtype_bits(t.dtype), bits))
      fail(ErrorKind::kMalformedFile, file, t.name, "byte size of shape x dtype overflows 64 bits");
    if (bits % 8 != 0)
      fail(ErrorKind::kMalformedFile, file, t.name,
           "sub-byte dtype does not fill a whole number of bytes");
    if (bits / 8 != t.nbytes())
      fail(ErrorKind::kMalformedFile, file, t.name,
           "data_offsets cover " + std::to_string(t.nbytes()) + " bytes but " +
               std::string(dtype_name(t.dtype)) + " of this shape needs " +
               std::to_string(bits / 8));
  }
  if (cursor != data_size)
    fail(ErrorKind::kMalformedFile, file, "",
         "tensors cover " + std::to_string(cursor) + " bytes of a data area of " +
             std::to_string(data_size) +
             (cursor < data_size ? " (trailing bytes)" : " (truncated)"),
         "the last tensor to end exactly at the end of the file");

  for (size_t i = 0; i < h.tensors_.size(); ++i) {
    if (!h.by_name_.emplace(h.tensors_[i].name, i).second)
      fail(ErrorKind::kMalformedFile, file, h.tensors_[i].name,
           "duplicate tensor name");  // unreachable: JSON keys unique
  }
  return h;
}

Header Header::parse_file_bytes(std::span<const uint8_t> file, const std::string& name) {
  if (file.size() < 8)
    fail(ErrorKind::kMalformedFile, name, "",
         "file of " + std::to_string(file.size()) + " bytes is too short", "at least 8 bytes");
  uint64_t n = header_length(file.first<8>(), file.size(), name);
  return parse(file.subspan(8, n), file.size() - 8 - n, name);
}

const TensorInfo* Header::find(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace moeckpt
