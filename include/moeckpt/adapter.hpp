#pragma once
// The state-dict adapter (docs/CONTRACT.md): HF layout <-> native (grouped-expert)
// layout of any registered family (ModelSpec), as plans over tensor sources, with a bit-exact
// Automodel mode.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "moeckpt/compat.hpp"
#include "moeckpt/job.hpp"
#include "moeckpt/model_spec.hpp"
#include "moeckpt/plan.hpp"

namespace moeckpt {

// "none", "automodel-0.6", "automodel-0.7".
std::string_view compat_name(Compat c) noexcept;
// Those names, and "automodel" (the newest version); nullopt for anything else.
std::optional<Compat> parse_compat(std::string_view name);
// Refuses a compat mode the checkpoint family's spec does not reproduce.
void require_reproduced(const ModelSpec& spec, Compat compat);

std::string_view attn_backend_name(AttnBackend b) noexcept;
std::optional<AttnBackend> parse_attn_backend(std::string_view name);

// The experts an EP rank owns: q, rem = divmod(E, W); rank r < rem owns q+1 from r*(q+1), else q
// from r*q + rem.
struct ExpertRange {
  int64_t first = 0;
  int64_t count = 0;
  static ExpertRange for_rank(int64_t n_experts, int64_t ep_size, int64_t ep_rank);
  bool contains(int64_t e) const noexcept { return e >= first && e < first + count; }
};

// The folder an EP rank's part goes to when one conversion writes every rank's:
// "ep-rank-R-of-W" in the destination.
std::string ep_rank_folder_name(int64_t ep_rank, int64_t ep_size);

struct FromHfOptions {
  int64_t ep_size = 1;
  // kEveryRank (folder conversions): each rank of ep_size, into its ep_rank_folder_name().
  int64_t ep_rank = 0;
  static constexpr int64_t kEveryRank = -1;
  Dtype dtype = Dtype::BF16;  // BF16 or F32
  Compat compat = Compat::kNone;
  uint64_t task_bytes = 32ull << 20;  // target output bytes per task (bounds buffers)
  // Planning reads every scale the rank uses and refuses zero/negative/non-finite entries, so a
  // bad scale fails before any output exists (default mode only; false: headers only).
  bool prescan_scales = true;
  // The source is a whole checkpoint: every tensor config.json implies must be there (default
  // mode; false for a few tensors converted on their own).
  bool whole_checkpoint = true;
  // false: experts stay per-expert HF tensors (dequantized in place, keys kept): the HF -> HF
  // dequantization, equal tensor for tensor to from-hf then to-hf --quant none. Needs EP 1.
  bool group_experts = true;
  // kTe: sinks are written as self_attn.attn_module.softmax_offset in F32 (Automodel's TE model).
  AttnBackend attn_backend = AttnBackend::kSdpa;
};

struct ToHfOptions {
  QuantMode quant = QuantMode::kBlock;
  // An Automodel mode quantizes as that version does: its cast (effective_quant).
  Compat compat = Compat::kNone;
  std::optional<std::string> exclude_regex;
  std::optional<std::string> prefix;  // prefix of expert keys; default: the grouped key's own
                                      // (Automodel mode: "model.")
  bool require_all_experts = true;    // a whole checkpoint: every expert of a layer and every
                                      // tensor config.json implies (default mode)
  uint64_t task_bytes = 32ull << 20;  // target output bytes per task (bounds buffers)
  // true: the source is an HF checkpoint of unquantized (BF16/F16/F32) weights, experts per expert:
  // the HF -> HF quantization, equal tensor for tensor to from-hf then to-hf.
  bool hf_source = false;
  // kTe: native sinks are named self_attn.attn_module.softmax_offset. In the default mode a sink
  // of either name is written back as attention_sink_bias in BF16 (as published); an Automodel
  // mode renames only under kTe and keeps the dtype, as that version does.
  AttnBackend attn_backend = AttnBackend::kSdpa;
  // A fused-QKV export: the TP degree the qkv_proj rows are interleaved over; 0: the
  // one the native folder records (moeckpt.checkpoint_tp_size), else 1.
  int64_t tp_size = 0;
  // convert_single_tensor_to_hf: one tensor on its own. Automodel 0.7.0 casts such a tensor of a
  // fused-QKV model split natively (its to_hf refuses to quantize the whole state dict).
  bool single_tensor = false;
  // The order of the plan's outputs, which is an HF folder's layout (the tensors of each shard,
  // their offsets, the shard boundaries). kByName: the source's tensors are planned by name,
  // whatever order the source lists them in (a CheckpointSource by name, a MemorySource in its
  // caller's order, e.g. a Python state dict's), so that the CLI, Python's to_hf_dir and a
  // distributed export of the same tensors write the same bytes. kSource: in the source's order,
  // as Automodel's to_hf orders its result (the Python adapter's in-memory to_hf; never a
  // folder).
  enum class Order { kByName, kSource };
  Order order = Order::kByName;
};

// What to-hf writes under these options: in an Automodel mode, that version's behaviour (0.6:
// always its cast; 0.7: its cast unless kNone, i.e. `quantization=False`); otherwise `quant`.
QuantMode effective_quant(const ToHfOptions& options) noexcept;

// Automodel's `_should_quantize_key`: ends in ".weight", contains none of the excluded substrings
// (norms, lm_head, embed_tokens, router, o_proj), and (0.7 on) does not start with "visual." or
// "audio.".
bool should_quantize_key(std::string_view key, Compat version = kNewestAutomodel);

// The keys our default block quantization turns into FP8: the tensors the published checkpoint
// stores as FP8 (q/k/v projections, dense MLP and expert projections).
bool is_published_fp8_key(std::string_view key);

// Metadata written into native shards.
inline constexpr const char* kMetaLayout = "moeckpt.layout";
inline constexpr const char* kMetaEpSize = "moeckpt.ep_size";
inline constexpr const char* kMetaEpRank = "moeckpt.ep_rank";
inline constexpr const char* kMetaExpertStart = "moeckpt.expert_start";
inline constexpr const char* kMetaExpertCount = "moeckpt.expert_count";
// Identifies the HF checkpoint an EP rank's folder was converted from (config.json, every tensor's
// name, dtype and shape, and the content of every scale and every tensor of at most 4 MiB: norms,
// routers, biases). to-hf refuses rank folders whose fingerprints differ.
inline constexpr const char* kMetaSourceFingerprint = "moeckpt.source_fingerprint";
// The checkpoint TP degree of a fused-QKV source, so that to-hf writes it back so.
inline constexpr const char* kMetaCheckpointTp = "moeckpt.checkpoint_tp_size";

// Plans. Validation happens here: a bad input fails before any output exists.
Plan plan_from_hf(const TensorSource& hf, const ModelConfig& config, const FromHfOptions& options);
// `expert_start[part]` is the first global expert id held by part `part` of a native source.
Plan plan_to_hf(const TensorSource& native, const ModelConfig& config, const ToHfOptions& options,
                const std::vector<int64_t>& expert_start);

// In-memory conversion: converted tensors in plan order.
struct NamedTensor {
  std::string name;
  Dtype dtype;
  std::vector<uint64_t> shape;
  std::vector<uint8_t> bytes;
};
std::vector<NamedTensor> run_in_memory(const Plan& plan, const TensorSource& source,
                                       const ExecOptions& exec = {});

// convert_single_tensor_to_hf: one native tensor (grouped experts hold all experts of the
// layer from `expert_start`) -> its HF (key, tensor) pairs, weight first then its scale.
std::vector<NamedTensor> convert_single_tensor_to_hf(const std::string& fqn, Dtype dtype,
                                                     const std::vector<uint64_t>& shape,
                                                     std::span<const uint8_t> bytes,
                                                     const ModelConfig& config,
                                                     const ToHfOptions& options,
                                                     int64_t expert_start = 0);

// Progress of a folder conversion, per output shard (called from worker threads).
class ProgressListener {
 public:
  virtual ~ProgressListener() = default;
  virtual void start(const std::vector<std::string>& shard_names,
                     const std::vector<uint64_t>& shard_bytes) = 0;
  virtual void written(size_t shard, uint64_t bytes) = 0;
  virtual void finish() = 0;
};

// Whole-folder conversions used by the CLI. The destination is locked while they run; shards are
// renamed into place as they finish and the index comes last, so a folder with an index is
// complete; on error nothing is left under a final name.
struct ConvertOptions {
  uint64_t max_shard_bytes = 5'000'000'000;
  ExecOptions exec;
  ProgressListener* progress = nullptr;
  ExistingOutput existing = ExistingOutput::kRefuse;
  // Called once the destination is taken (created, locked), before any output is written: from
  // here on a stop request (exec.cancel) ends the conversion cleanly; before, nothing needs
  // cleaning up (the CLI lets a signal end planning at once).
  std::function<void()> on_start;
  // A distributed conversion (docs/SCALING.md, moeckpt/distributed.hpp): this process is worker
  // `worker` of `workers` and writes only the shards assign_shards() gives it, recording them in
  // its own manifest. Then whichever worker finds every shard recorded verifies them and writes
  // the index (as finalize_dir does): the last to finish, in whatever order the workers ran.
  // Worker 0 first waits up to `wait` while workers that own missing shards are still running
  // (not for workers not started: a job array may run them later). 0 workers: one process writes
  // everything.
  int64_t workers = 0;
  int64_t worker = 0;
  std::chrono::milliseconds wait = std::chrono::hours(48);
  // Distributed: the worker of each output shard, where the caller decides (a training job's
  // export: the rank holding a shard's experts); empty: assign_shards() by bytes.
  std::vector<int64_t> shard_owners;
  // Distributed: false leaves finalize_dir() to the caller (after its own barrier).
  bool finalize = true;
};
struct ConvertReport {
  size_t tensors = 0;
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;
  size_t shards = 0;
  size_t shards_kept = 0;  // verified shards a resumed conversion did not redo
  size_t own_shards = 0;   // distributed: the shards this worker wrote or kept
  // Distributed: every folder is complete (this worker completed it, or found it completed).
  bool finalized = true;
  // Distributed: per folder not complete yet, why and how it gets completed (a worker that stopped
  // is named here: this worker's own shards are done either way).
  std::vector<std::string> pending;
};

// What each worker of a distributed conversion would read and write, from the headers alone (no
// tensor data is read): the plan `moeckpt plan` prints.
struct WorkerShare {
  uint64_t input_bytes = 0;  // distinct source bytes its tasks read (scales counted whole)
  uint64_t output_bytes = 0;
  std::vector<std::string> shards;  // "file" or "folder/file" when every EP rank is written
};
struct DistributionPlan {
  std::string command;
  std::vector<std::string> folders;  // "" for the destination itself
  size_t shards = 0;
  uint64_t input_bytes = 0;  // distinct source bytes the whole conversion reads
  uint64_t output_bytes = 0;
  std::vector<WorkerShare> workers;
};
enum class FolderCommand { kFromHf, kDequantize, kQuantize };
// `from_hf` for kFromHf and kDequantize (its dtype, compat, EP), `to_hf` for kQuantize.
DistributionPlan plan_distribution(FolderCommand command, const std::filesystem::path& src,
                                   const FromHfOptions& from_hf, const ToHfOptions& to_hf,
                                   uint64_t max_shard_bytes, int64_t workers);
ConvertReport from_hf_dir(const std::filesystem::path& src, const std::filesystem::path& dst,
                          const FromHfOptions& options, const ConvertOptions& convert = {});
// to-hf of tensors in memory (the Python package's to_hf_dir) through the same job layer: the
// resume fingerprint holds each input tensor's content checksum.
ConvertReport to_hf_dir_from_memory(const MemorySource& native, const ModelConfig& config,
                                    const std::filesystem::path& dst, const ToHfOptions& options,
                                    int64_t expert_start, const ConvertOptions& convert = {});
// Loading an HF checkpoint straight into memory a model already owns: each destination is rows
// [row0, row1) (row1 < 0: all) of the native tensor `name` of global `shape`, held contiguously
// in `bytes` as `dtype` (converted from the conversion's dtype as torch's copy_ does: a BF16, F16
// or F32 tensor into BF16, F16, F32 or F64; any other dtype only for a tensor of that dtype). Only
// the bytes behind the wanted rows are read; nothing else is allocated beyond the task buffers.
struct LoadDestination {
  std::string name;
  Dtype dtype{};
  std::vector<uint64_t> shape;
  int64_t row0 = 0;
  int64_t row1 = -1;
  std::span<uint8_t> bytes;
  // Set: the destination is not host memory (a GPU tensor, a strided view): its bytes go through
  // this call instead, `staged_bytes` of them in all, each piece once, at its byte offset within
  // the destination, from worker threads (no two pieces overlap); `bytes` is unused.
  std::function<void(uint64_t offset, std::span<const uint8_t> piece)> stage = nullptr;
  uint64_t staged_bytes = 0;
};
struct LoadReport {
  std::vector<std::string> missing;     // destinations the checkpoint has no tensor for
  std::vector<std::string> unexpected;  // native tensors of the checkpoint no destination wants
  size_t tensors = 0;                   // destinations filled
  uint64_t bytes_read = 0;
};
struct LoadOptions {
  // A destination the checkpoint has no tensor for is an error (kConfigMismatch, naming it),
  // raised before anything is read; otherwise it is reported in LoadReport::missing.
  bool require_all = false;
  // kCheckAndWrite: after the destinations are checked against the plan (names, shapes, dtypes,
  // rows), a checking pass (ExecOptions::check_only) reads the rank's inputs and makes every
  // refusal the conversion would make; only then is anything written, so a refused checkpoint
  // leaves every destination as it was. kCheckOnly: that pass alone (a distributed load agrees on
  // its outcome before any rank writes); kWriteOnly: no checking pass (destinations with nothing
  // to keep, as from_hf_dir's fresh tensors).
  enum class Phase { kCheckAndWrite, kCheckOnly, kWriteOnly } phase = Phase::kCheckAndWrite;
};
// `options` as for from-hf: EP size 1 plans every expert (a destination's rows say which ones a
// rank holds); an EP rank's plan has that rank's grouped tensors (destinations of their shape),
// and only that rank's experts need be in the folder. LoadReport::bytes_read counts the writing
// pass only (the checking pass reads the FP8 inputs once more).
LoadReport load_hf_into(const std::filesystem::path& dir, const std::vector<LoadDestination>& dests,
                        const FromHfOptions& options, const ExecOptions& exec = {},
                        const LoadOptions& load = {});
// The export of a native state dict whose tensors `split` are divided over `workers` processes
// along their first dimension (EP ranks; process k holds the rows ExpertRange::for_rank gives it,
// the other tensors are whole everywhere): the global plan's shards, the worker of each (the one
// holding most of the split rows the shard reads; shards reading no split tensor go to worker
// 0), and per worker the rows [lo, hi) of each split tensor its shards read. `native` needs only
// names, dtypes and shapes (no bytes are read).
struct ExportDistribution {
  std::vector<std::string> shards;
  std::vector<int64_t> owners;
  std::vector<std::map<std::string, std::pair<int64_t, int64_t>>> rows_needed;  // per worker
};
ExportDistribution plan_export_distribution(const TensorSource& native, const ModelConfig& config,
                                            const ToHfOptions& options,
                                            const std::vector<std::string>& split,
                                            uint64_t max_shard_bytes, int64_t workers);
// to-hf of any tensor source (e.g. a generated one): `inputs_text` is its identity for resume.
ConvertReport to_hf_dir_from_source(const TensorSource& native, const std::string& inputs_text,
                                    const ModelConfig& config, const std::filesystem::path& dst,
                                    const ToHfOptions& options, int64_t expert_start,
                                    const ConvertOptions& convert = {});
// HF -> HF in one pass (plan_from_hf without grouping / plan_to_hf of an HF source): an FP8
// checkpoint to BF16/F32 without scales, quantization_config removed; an unquantized checkpoint to
// the published FP8 layout.
ConvertReport dequantize_dir(const std::filesystem::path& src, const std::filesystem::path& dst,
                             const FromHfOptions& options, const ConvertOptions& convert = {});
ConvertReport quantize_dir(const std::filesystem::path& src, const std::filesystem::path& dst,
                           const ToHfOptions& options, const ConvertOptions& convert = {});
// A training job's sharded save (moeckpt/sharded_save.hpp: torch's or NeMo Automodel's DCP
// Hugging Face writer) -> the HF checkpoint its consolidation is: every tensor assembled from its
// pieces (refused, before any output exists, unless they tile it), in its HF dtype, in the file
// the save's mapping or file names give it; with a quantization mode, the family's published FP8
// set in the same pass (equal to quantize_dir of the consolidated checkpoint).
struct ConsolidateOptions {
  QuantMode quant = QuantMode::kNone;
  // Automodel's consolidation cast: regular float tensors become this dtype, except those the
  // save maps to F32; nullopt: each tensor's HF dtype (the save's dtype mapping, else as saved).
  std::optional<Dtype> dtype;
  // The model's config.json; nullopt: the save's .hf_metadata/config.json.
  std::optional<std::filesystem::path> config;
  // true: the output files are the save's (mapping / file names); false: shards of at most
  // ConvertOptions::max_shard_bytes.
  bool save_layout = true;
  uint64_t task_bytes = 32ull << 20;  // target output bytes per task (bounds buffers)
};
ConvertReport consolidate_dir(const std::filesystem::path& src, const std::filesystem::path& dst,
                              const ConsolidateOptions& options,
                              const ConvertOptions& convert = {});

ConvertReport to_hf_dirs(const std::vector<std::filesystem::path>& srcs,
                         const std::filesystem::path& dst, const ToHfOptions& options,
                         const std::optional<std::filesystem::path>& config_path,
                         const ConvertOptions& convert = {});

}  // namespace moeckpt
