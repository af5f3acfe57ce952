#include "moeckpt/scale_layout.hpp"

#include <algorithm>

namespace moeckpt {

std::optional<FusedQkvLayout> FusedQkvLayout::make(int64_t q_rows, int64_t k_rows, int64_t v_rows,
                                                   int64_t block_rows, int64_t tp) {
  if (tp <= 0 || block_rows <= 0 || q_rows <= 0 || k_rows <= 0 || v_rows <= 0) return std::nullopt;
  if (q_rows % tp || k_rows % tp || v_rows % tp) return std::nullopt;
  FusedQkvLayout l;
  l.q_ = q_rows / tp;
  l.k_ = k_rows / tp;
  l.v_ = v_rows / tp;
  l.block_ = block_rows;
  l.tp_ = tp;
  return l;
}

int64_t FusedQkvLayout::per_shard(Projection p) const noexcept {
  return p == Projection::kQ ? q_ : p == Projection::kK ? k_ : v_;
}

int64_t FusedQkvLayout::shard_offset(Projection p) const noexcept {
  return p == Projection::kQ ? 0 : p == Projection::kK ? q_ : q_ + k_;
}

int64_t FusedQkvLayout::rows(Projection p) const noexcept {
  return per_shard(p) * tp_;
}

int64_t FusedQkvLayout::scale_rows(Projection p) const noexcept {
  // Blocks whose first row falls inside p's part of a shard, times the shard count.
  int64_t lo = shard_offset(p), hi = lo + per_shard(p);
  return tp_ * (ceil_div(hi, block_) - ceil_div(lo, block_));
}

FusedQkvLayout::ScaleSource FusedQkvLayout::scale_source(Projection p, int64_t row) const noexcept {
  const int64_t shard = row / per_shard(p);
  const int64_t pos = shard_offset(p) + row % per_shard(p);
  const int64_t block = pos / block_;
  const int64_t first_row = block * block_;
  Projection owner = first_row < q_        ? Projection::kQ
                     : first_row < q_ + k_ ? Projection::kK
                                           : Projection::kV;
  const int64_t owner_lo = shard_offset(owner);
  const int64_t owner_first_block = ceil_div(owner_lo, block_);
  const int64_t owner_blocks = ceil_div(owner_lo + per_shard(owner), block_) - owner_first_block;
  return {owner, shard * owner_blocks + (block - owner_first_block)};
}

bool FusedQkvLayout::differs_from_plain() const noexcept {
  for (Projection p : {Projection::kQ, Projection::kK, Projection::kV}) {
    if (scale_rows(p) != plain_scale_count(rows(p), block_)) return true;
    // Both mappings are constant between breakpoints (a plain block boundary, a shard boundary,
    // a fused block boundary): one check per piece, O(rows / block), not one per row.
    const int64_t ps = per_shard(p);
    for (int64_t r = 0; r < rows(p);) {
      auto s = scale_source(p, r);
      if (s.owner != p || s.scale_row != r / block_) return true;
      const int64_t pos = shard_offset(p) + r % ps;
      r = std::min({(r / block_ + 1) * block_, (r / ps + 1) * ps, r + (block_ - pos % block_)});
    }
  }
  return false;
}

}  // namespace moeckpt

#include "moeckpt/model_config.hpp"

namespace moeckpt {

std::optional<FusedQkvLayout> detect_fused_qkv(const AttentionDims& dims, int64_t k_scale_rows,
                                               int64_t block_rows,
                                               const std::array<int64_t, 3>& weight_rows) {
  if (weight_rows != std::array<int64_t, 3>{dims.q_rows(), dims.k_rows(), dims.v_rows()})
    return std::nullopt;
  auto fused = FusedQkvLayout::make(dims.q_rows(), dims.k_rows(), dims.v_rows(), block_rows);
  if (!fused || !fused->differs_from_plain()) return std::nullopt;
  if (k_scale_rows != fused->scale_rows(Projection::kK)) return std::nullopt;
  if (k_scale_rows == plain_scale_count(dims.k_rows(), block_rows)) return std::nullopt;
  return fused;
}

}  // namespace moeckpt
