#pragma once
// `moeckpt inspect`: validate a whole checkpoint folder and summarize it.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moeckpt {

struct InspectReport {
  struct DtypeTotal {
    uint64_t tensors = 0;
    uint64_t bytes = 0;
  };
  // FP8 weights grouped by family (kind, projection, shape, scale shape, layout).
  struct Fp8Family {
    std::string family;
    std::vector<uint64_t> shape;
    std::vector<uint64_t> scale_shape;
    std::string scale_dtype;
    std::string layout;
    uint64_t count = 0;
  };
  // A native folder's grouped expert tensors by name (layer as "*"), shape and dtype; the shape is
  // [experts held, in, width].
  struct GroupedFamily {
    std::string family;
    std::vector<uint64_t> shape;
    std::string dtype;
    uint64_t count = 0;
  };
  // A native folder's expert-parallel placement, as its moeckpt.* __metadata__ records it.
  struct ExpertParallel {
    bool recorded = false;   // without it, to-hf reads the folder as the whole checkpoint
    std::string unreadable;  // why the recorded values cannot be read (empty: they were read)
    int64_t size = 0, rank = 0;
    int64_t expert_start = 0, expert_count = 0;  // the global experts [start, start + count)
    // Where the metadata (or, without it, config.json's expert count) and the grouped tensors'
    // first dimension or config.json's split of the experts over the ranks disagree.
    std::vector<std::string> disagreements;
  };
  struct AttentionLayer {
    std::string layer;  // "3" or "mtp.0"
    std::string kind;   // "full" / "sliding_window"
    std::vector<uint64_t> k_scale_shape;
    std::string layout;  // "plain" or "fused_kv_t4"
  };

  // A training job's sharded save (moeckpt/sharded_save.hpp): who wrote it, and how its pieces
  // tile the tensors (a save that opens is covered exactly: gaps and overlaps are refused).
  struct ShardedSaveSummary {
    std::string writer;  // "torch" or "automodel"
    std::string dcp_version;
    int64_t ranks = 0;         // distinct ranks with a file
    int64_t output_files = 0;  // of the consolidated checkpoint
    uint64_t pieces = 0, empty_pieces = 0;
    uint64_t split_tensors = 0;                // tensors in more than one piece
    std::map<std::string, uint64_t> restored;  // "F32->BF16": tensors read as their HF dtype
    bool has_config = false;                   // .hf_metadata/config.json
  };
  std::optional<ShardedSaveSummary> sharded_save;
  std::string dir;
  size_t shards = 0;
  bool has_index = false;
  uint64_t tensors = 0;
  uint64_t total_bytes = 0;
  std::map<std::string, DtypeTotal> by_dtype;
  bool native = false;  // grouped experts (or moeckpt metadata saying so); else HF, one per expert
  bool has_config = false;
  std::string model;  // the family and layout config.json describes, as its spec names it
  int64_t layers = 0, full_layers = 0, swa_layers = 0, dense_layers = 0, moe_layers = 0;
  bool latent_attention = false;  // every layer's attention is latent (full_layers counts them)
  int64_t mtp_layers = 0;
  int64_t n_routed_experts = 0;
  // MoE layer -> experts it holds: HF, the distinct expert ids present; native, the grouped
  // tensors' first dimension (an EP rank's folder: its share).
  std::map<int64_t, int64_t> experts_per_layer;
  std::optional<ExpertParallel> expert_parallel;  // native folders only
  bool stacked_experts = false;  // HF experts stacked per layer (one tensor per projection)
  std::vector<GroupedFamily> grouped;
  std::vector<Fp8Family> fp8;
  std::vector<AttentionLayer> attention;
  std::vector<std::string> problems;  // semantic errors: the checkpoint cannot be converted as is
                                      // (validation stops at the first)
  std::vector<std::string> notes;     // unexpected but harmless (unknown tensor names, ...)
};

struct InspectOptions {
  // Headers, index and config.json only: no scan of scale values and FP8 NaN codes (and a folder
  // without config.json is summarized instead of refused).
  bool headers_only = false;
  unsigned threads = 0;  // of the data scan; 0: all cores
};

// Throws moeckpt::Error when the folder, a file in it or config.json is invalid; semantic problems
// (what a conversion would refuse) are listed in `problems`.
InspectReport inspect_checkpoint(const std::filesystem::path& dir,
                                 const InspectOptions& options = {});
nlohmann::ordered_json to_json(const InspectReport& report);
std::string to_text(const InspectReport& report);

}  // namespace moeckpt
