#pragma once
// A fused attention projection (qkv_proj) holding the checkpoint's TP shards one after the other,
// shard t being [Q_t, K_t, V_t] (each projection's rows split evenly over the TP degree), each
// shard with its own block-scale grid.
#include <cstdint>
#include <map>
#include <string>

#include "moeckpt/model_config.hpp"

namespace moeckpt {

struct TpInterleavedQkv {
  int64_t tp = 1;
  int64_t q = 0, k = 0, v = 0;  // rows per shard
  int64_t rows_per_shard() const noexcept { return q + k + v; }
  int64_t rows() const noexcept { return tp * rows_per_shard(); }
  // First source row of projection `p` (0 q, 1 k, 2 v) in shard t, and its row count per shard.
  int64_t first_row(int64_t t, int p) const noexcept {
    return t * rows_per_shard() + (p == 0 ? 0 : p == 1 ? q : q + k);
  }
  int64_t shard_rows(int p) const noexcept { return p == 0 ? q : p == 1 ? k : v; }
};

// The layout of a layer of these dimensions over `tp` shards; refuses head counts that `tp` does
// not divide (errors name `file` and `tensor`).
TpInterleavedQkv tp_interleaved_qkv(const AttentionDims& dims, int64_t tp, const std::string& file,
                                    const std::string& tensor);
// Automodel's rounding rule for a degree fixed by the family: heads / tp query heads per shard
// (floor), and at least one key/value head per shard (a layer with fewer key/value heads than
// shards repeats them); `exact` refuses both cases instead (the default mode).
TpInterleavedQkv tp_interleaved_qkv_rounded(const AttentionDims& dims, int64_t tp, bool exact,
                                            const std::string& file, const std::string& tensor);
// Row of canonical [Q, K, V] row `r` (all shards' Q, then K, then V) in the interleaved layout.
int64_t interleaved_row(const TpInterleavedQkv& l, int64_t canonical_row) noexcept;

// The checkpoint TP degree the index's metadata.tp_size records (1 when absent); anything but a
// positive integer is refused, naming `index_file`.
int64_t checkpoint_tp_size(const std::map<std::string, std::string>& index_metadata,
                           const std::string& index_file);

}  // namespace moeckpt
