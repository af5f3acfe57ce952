#pragma once
#include <array>
// Where the block scale of a weight row lives. Plain grid: row r of a projection uses its own scale
// row r / B. Fused Q/K/V (the published full-attention layout): the projections were quantized
// as T tensor-parallel shards [Q_c | K_c | V_c], each cut into B-row blocks from its own first row;
// a block's scale row belongs to the projection holding the block's first row
// (the reference checkpoint's full-attention K/V scale layout, docs/CHECKPOINT.md).
#include <cstddef>
#include <cstdint>
#include <optional>

#include "moeckpt/ceil_div.hpp"
#include "moeckpt/tensor_key.hpp"

namespace moeckpt {

inline constexpr int64_t kPublishedTensorParallel = 4;

// Index of q, k, v (0, 1, 2) in per-projection arrays.
inline size_t qkv_index(Projection p) noexcept {
  return p == Projection::kQ ? 0 : p == Projection::kK ? 1 : 2;
}
inline constexpr Projection kQkv[3] = {Projection::kQ, Projection::kK, Projection::kV};

// Scale rows (or columns) of the plain grid for `n` weight rows and block size `b`.
inline int64_t plain_scale_count(int64_t n, int64_t b) noexcept {
  return ceil_div(n, b);
}

class FusedQkvLayout {
 public:
  struct ScaleSource {
    Projection owner;   // kQ, kK or kV: whose scale tensor holds the row
    int64_t scale_row;  // row within that scale tensor
  };

  // nullopt when a projection's rows do not split evenly over `tp` shards.
  static std::optional<FusedQkvLayout> make(int64_t q_rows, int64_t k_rows, int64_t v_rows,
                                            int64_t block_rows,
                                            int64_t tp = kPublishedTensorParallel);

  int64_t scale_rows(Projection p) const noexcept;  // Sq, Sk, Sv
  int64_t rows(Projection p) const noexcept;
  ScaleSource scale_source(Projection p, int64_t row) const noexcept;
  // False when a projection owns no scale row (every block of its part starts in another one):
  // projections that small are quantized on the plain grid by synth and to-hf.
  bool every_projection_owns_scale_rows() const noexcept {
    return scale_rows(Projection::kQ) > 0 && scale_rows(Projection::kK) > 0 &&
           scale_rows(Projection::kV) > 0;
  }
  // True when some row uses a different scale row (or owner) than the plain grid would give it.
  bool differs_from_plain() const noexcept;
  int64_t tp() const noexcept { return tp_; }
  int64_t block_rows() const noexcept { return block_; }

 private:
  int64_t per_shard(Projection p) const noexcept;
  int64_t shard_offset(Projection p) const noexcept;  // row of p's first row within a shard
  int64_t q_ = 0, k_ = 0, v_ = 0, block_ = 0, tp_ = 0;
};

}  // namespace moeckpt

namespace moeckpt {

struct AttentionDims;

// The layout a k scale with `k_scale_rows` rows reveals for an attention layer of these
// dimensions: the fused T=4 layout when that row count is the fused one and differs from the plain
// grid's; nullopt means the plain grid (extra trailing rows ignored). `weight_rows` are the row
// counts of the layer's q, k and v weights as the files give them: unless they equal the
// dimensions config.json implies, nothing is derived from those dimensions (a hostile config must
// not drive work before its values are checked against the tensors), and the answer is nullopt.
std::optional<FusedQkvLayout> detect_fused_qkv(const AttentionDims& dims, int64_t k_scale_rows,
                                               int64_t block_rows,
                                               const std::array<int64_t, 3>& weight_rows);

}  // namespace moeckpt
