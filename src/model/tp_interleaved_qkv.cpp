#include "moeckpt/tp_interleaved_qkv.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <charconv>

#include "moeckpt/error.hpp"

namespace moeckpt {

// The largest TP degree accepted: far beyond any checkpoint, small enough for row arithmetic.
constexpr int64_t kMaxTp = 1 << 16;

TpInterleavedQkv tp_interleaved_qkv(const AttentionDims& a, int64_t tp, const std::string& file,
                                    const std::string& tensor) {
  if (a.num_heads % tp != 0 || a.num_kv_heads % tp != 0)
    fail(ErrorKind::kConfigMismatch, file, tensor,
         fmt::format("the fused QKV rows are interleaved over checkpoint TP {}, which does not "
                     "divide the layer's {} query and {} key/value heads",
                     tp, a.num_heads, a.num_kv_heads),
         "a metadata.tp_size that divides every layer's head counts");
  return {tp, a.num_heads / tp * a.head_dim, a.num_kv_heads / tp * a.head_dim,
          a.num_kv_heads / tp * a.v_head_dim};
}

TpInterleavedQkv tp_interleaved_qkv_rounded(const AttentionDims& a, int64_t tp, bool exact,
                                            const std::string& file, const std::string& tensor) {
  if (exact) return tp_interleaved_qkv(a, tp, file, tensor);
  const int64_t kv = std::max<int64_t>(1, a.num_kv_heads / tp);
  return {tp, a.num_heads / tp * a.head_dim, kv * a.head_dim, kv * a.v_head_dim};
}

int64_t interleaved_row(const TpInterleavedQkv& l, int64_t r) noexcept {
  const std::array<int64_t, 3> n{l.q, l.k, l.v};
  for (int p = 0; p < 3; ++p) {
    if (r < l.tp * n[p]) return l.first_row(r / n[p], p) + r % n[p];
    r -= l.tp * n[p];
  }
  return -1;
}

int64_t checkpoint_tp_size(const std::map<std::string, std::string>& md,
                           const std::string& index_file) {
  auto it = md.find("tp_size");
  if (it == md.end()) return 1;
  const std::string& s = it->second;  // JSON text: a bare positive integer, not "2", 2.0 or true
  int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || s[0] == '0' || ec != std::errc() || p != s.data() + s.size() || v < 1 ||
      v > kMaxTp)
    fail(ErrorKind::kMalformedFile, index_file, "",
         "metadata.tp_size is " + s + ", not a positive integer",
         "the checkpoint TP degree that interleaves the fused QKV rows, e.g. 4");
  return v;
}

}  // namespace moeckpt
