#pragma once
// A conversion plan: pure data computed from input headers, config and options. It lists every
// output tensor (sizes known before any byte moves) and the tasks that fill them from source
// tensors. Executors run plans; nothing here touches data.
#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "moeckpt/ceil_div.hpp"
#include "moeckpt/safetensors_writer.hpp"
#include "moeckpt/tensor_source.hpp"

namespace moeckpt {

// What a dequantization does with NaN inputs: refuse them (default), or reproduce torch's CPU
// kernels (NaN -> BF16 0xFFFF; F32 keeps the widened FP8 NaN 0x7FF00000 | sign).
enum class NanPolicy { kRefuse, kTorchCompat };

// Weight rows [row0, row1) use row `scale_row` of scale tensor `tensor` (an index into the
// tensors of their ScaleRef, or into the scale outputs of a GroupQuantTask).
struct ScaleRun {
  int64_t row0 = 0, row1 = 0;
  uint32_t tensor = 0;
  int64_t scale_row = 0;
};

// Where the block scales of a weight's rows live, as the model's spec computed it. Without runs,
// a grid over tensors[0]: row r uses scale row r / block_rows (restarting every period_rows rows
// with period_scale_rows scale rows each, when period_rows > 0); columns c use c / block_cols.
struct ScaleRef {
  std::vector<const SourceTensor*> tensors;
  std::vector<int64_t> used_rows;  // per tensor: the rows some block uses (the ones checked)
  std::vector<ScaleRun> runs;      // sorted, covering every weight row; empty: the grid
  int64_t block_rows = 128;
  int64_t block_cols = 128;
  int64_t period_rows = 0;
  int64_t period_scale_rows = 0;
  bool check_values = true;  // refuse zero/negative/non-finite scales
  // Refuse a dequantized product that is not finite in the output dtype (a huge finite scale):
  // set where planning did not check the scale values against their blocks beforehand.
  bool check_products = false;
  // The grid's one scale tensor (null when runs map rows to several).
  const SourceTensor* grid() const noexcept { return runs.empty() ? tensors.at(0) : nullptr; }
};

struct DequantInput {
  const SourceTensor* weight = nullptr;
  std::optional<ScaleRef> scale;  // none: widen unscaled (Automodel's treatment of such experts)
  // MXFP4: `weight` holds packed E2M1 codes [rows, cols / 2] (U8) and this its E8M0 scales
  // [rows, cols / 32] (U8); `scale` is then unused.
  const SourceTensor* mx_scale = nullptr;
  NanPolicy nan = NanPolicy::kRefuse;
  // MXFP4 under kTorchCompat: E8M0 255 is 2^128 in an exact product (torch.ldexp: 0 stays 0, 0.5
  // gives 2^127) instead of NaN.
  bool mx_ldexp = false;
};

// The largest buffer a copy moves bytes through.
inline constexpr uint64_t kCopyChunkBytes = 16ull << 20;

// from-hf
struct CopyTask {
  const SourceTensor* src;
  size_t out;
  uint64_t chunk_bytes = kCopyChunkBytes;  // moved through one buffer of this size
  // Set: each element is converted to this dtype (BF16 round to nearest even, or F32) from the
  // source's floating dtype, as torch's `.to(dtype)` does; unset: the bytes as they are.
  std::optional<Dtype> convert_to;
  // Elements [elem0, elem1) of the (flattened) tensor only; the rest is neither read nor written.
  uint64_t elem0 = 0;
  uint64_t elem1 = UINT64_MAX;
  // Source element i lands on output element i + out_delta (a slice of a stacked tensor, or one
  // EP rank's part of a gathered one).
  int64_t out_delta = 0;
};
// Rows [row0, row1) of a dequantized weight (large weights are split so that a task's buffers
// stay small; row1 < 0 means all rows).
struct DequantTask {
  DequantInput in;
  size_t out;
  Dtype out_dtype;
  int64_t row0 = 0;
  int64_t row1 = -1;
  int64_t out_row0 = -1;  // the output row that source row row0 lands on (-1: row0)
};
// Writes slot `slot` of a grouped expert tensor [n, rows, cols]: part p's weight [w_rows, rows]
// is dequantized and transposed into columns [col_offset, col_offset + w_rows).
struct ExpertSlotTask {
  size_t out;
  int64_t slot;
  int64_t rows;
  int64_t cols;
  std::vector<std::pair<DequantInput, int64_t>> parts;
  Dtype out_dtype;
};

// to-hf
enum class QuantMode { kBlock, kCast, kNone };

// A 2-D matrix read from a native tensor: the whole 2-D tensor, or the transpose of columns
// [col0, col0 + cols) of slot `slot` of a grouped [n, rows, width] tensor.
struct MatrixView {
  const SourceTensor* src = nullptr;
  int64_t slot = -1;
  int64_t col0 = 0;
  int64_t cols = 0;
};

// The block format a quantizing EmitTask writes: FP8 E4M3 with F32 block scales, or MXFP4 (packed
// E2M1 [rows, cols / 2] with E8M0 scales [rows, cols / 32], both U8; mode kBlock only).
enum class BlockFormat { kFp8, kMxfp4 };

struct EmitTask {
  MatrixView in;
  size_t out_weight;
  std::optional<size_t> out_scale;
  QuantMode mode;
  int64_t scale_rows = 0;  // rows of the scale tensor (>= ceil(R / block) when padded)
  int64_t block_rows = 128;
  int64_t block_cols = 128;
  // Rows [row0, row1) of a whole-tensor view, a multiple of block_rows apart (row1 < 0: all).
  // The task holding the last rows also writes the scale's padding rows.
  int64_t row0 = 0;
  int64_t row1 = -1;
  BlockFormat format = BlockFormat::kFp8;
  // MXFP4: the output row the view's row 0 lands on (one expert of a stacked [n, rows, ...]
  // output).
  int64_t out_row0 = 0;
};

// Several EmitTasks on the same slot of a grouped tensor (an expert's gate and up): the slot is
// read once.
struct SlotGroupTask {
  std::vector<EmitTask> parts;
};

// Block quantization of inputs whose rows share block scales across tensors (a fused layout): a
// scale is the amax over every row mapped to it, so the inputs are read twice (amax, then codes).
struct GroupQuantTask {
  std::vector<std::optional<MatrixView>> in;      // whole 2-D tensors; none: not written
  std::vector<std::optional<size_t>> out_weight;  // per input
  std::vector<std::vector<ScaleRun>> runs;        // per input: its rows' scale rows
  std::vector<std::optional<size_t>> out_scale;   // per scale tensor
  std::vector<int64_t> scale_rows;                // per scale tensor
  int64_t block_cols = 128;
  // BF16 inputs are read in runs of this many rows, twice (block amax, then quantization), so the
  // buffers stay small whatever the projection size; 0: whole tensors.
  int64_t chunk_rows = 0;
};

// Rows [out_row0, out_row0 + rows) of an output gathered from rows [src_row0, ...) of a whole
// 2-D source tensor.
struct RowSegment {
  const SourceTensor* src = nullptr;
  int64_t src_row0 = 0;
  int64_t rows = 0;
  int64_t out_row0 = 0;
};
// FP8 block quantization of output rows [row0, row1), gathered from several sources, on a grid of
// blocks starting at row0 (a block-aligned range of one independent grid): codes go to rows
// [row0, row1) of `out_weight`, block scales to rows from `scale_row0` of `out_scale`.
struct GatherQuantTask {
  std::vector<RowSegment> segments;  // cover [row0, row1) exactly
  size_t out_weight;
  size_t out_scale;
  int64_t row0 = 0, row1 = 0, cols = 0;
  int64_t scale_row0 = 0;
  int64_t block_rows = 128, block_cols = 128;
};

using Task = std::variant<CopyTask, DequantTask, ExpertSlotTask, EmitTask, SlotGroupTask,
                          GroupQuantTask, GatherQuantTask>;

struct Plan {
  std::vector<TensorSpec> outputs;
  std::vector<Task> tasks;
  std::map<std::string, std::string> metadata;  // __metadata__ of every output shard
  // Entries of the index's "metadata" (JSON text values, e.g. {"tp_size", "4"}); when set, the
  // index is written even for a single shard.
  std::map<std::string, std::string> index_metadata;
  // Set (one per output): the file each output goes to, of output_files (ShardingOptions::file_of:
  // a layout the input gives, as a sharded save's mapping); empty: shards by size.
  std::vector<size_t> output_file;
  size_t output_files = 0;
  // Source tensors the tasks refer to that the plan owns: views of the source's tensors (members
  // of stacked tensors, SourceTensor::stored), kept alive with the plan.
  std::shared_ptr<const std::vector<SourceTensor>> views;
  uint64_t output_bytes() const;
};

// Rows [row0, row1) of an output along its first dimension.
struct RowWindow {
  int64_t row0 = 0;
  int64_t row1 = 0;
};
// Restricts a plan to row windows of its outputs (`windows[out]`; nullopt: not wanted): tasks
// that write no wanted row are dropped, and copies and row-range dequantizations are clipped, so
// that only the bytes behind the wanted rows are read. Output indices are kept. Refuses a task
// that cannot be clipped (a quantizing task) when its window is partial.
void restrict_to_rows(Plan& plan, const std::vector<std::optional<RowWindow>>& windows);

// Receives output bytes; offsets are within an output tensor.
class TensorSink {
 public:
  virtual ~TensorSink() = default;
  virtual void write(size_t out, uint64_t offset, std::span<const uint8_t> bytes) = 0;
};

// Keeps outputs in memory (the in-memory API and tests).
class MemorySink final : public TensorSink {
 public:
  explicit MemorySink(const std::vector<TensorSpec>& outputs);
  void write(size_t out, uint64_t offset, std::span<const uint8_t> bytes) override;
  std::vector<std::vector<uint8_t>>& buffers() { return buffers_; }

 private:
  std::vector<std::vector<uint8_t>> buffers_;
};

class WriterSink final : public TensorSink {
 public:
  explicit WriterSink(CheckpointWriter& w) : w_(w) {}
  void write(size_t out, uint64_t offset, std::span<const uint8_t> bytes) override {
    w_.write(out, offset, bytes);
  }

 private:
  CheckpointWriter& w_;
};

struct ExecOptions {
  unsigned threads = 0;  // 0: all cores
  // Task buffers held at once (MemoryBudget); a plan with a task larger than its in-flight share
  // is refused before any task runs.
  uint64_t max_memory = 1ull << 30;
  // Called (from worker threads, concurrently) with the output bytes each write delivers.
  std::function<void(size_t out, uint64_t bytes)> on_write;
  // When set (e.g. from a signal), no further task starts and execute() throws Interrupted.
  const std::atomic<bool>* cancel = nullptr;
  // Tasks read their inputs and make every refusal their conversion would make (scale entries,
  // overflowing products, NaN codes, failed reads), but convert and write nothing: a pass that
  // lets a caller whose outputs are live memory (load_hf_into) refuse a checkpoint before the
  // first byte lands. Plain copies are skipped (they refuse nothing their headers did not); FP8
  // inputs are scanned without the kernels; other dequantized inputs are converted into scratch.
  bool check_only = false;
};

// How the executor divides ExecOptions::max_memory: buffers of the tasks in flight (three
// quarters), and freed buffers each worker thread keeps for reuse (the rest, at most 256 MiB per
// thread), so the resident set of task buffers stays within the budget. The in-flight share does
// not depend on the thread count and never shrinks as the budget grows, so the budgets that hold
// a plan are exactly those from one smallest budget up.
struct MemoryBudget {
  uint64_t in_flight = 0;
  uint64_t cache_per_thread = 0;
  static MemoryBudget split(uint64_t max_memory, unsigned threads);
  // The smallest max_memory whose in-flight share holds a task of `need` bytes (one byte less
  // does not).
  static uint64_t needed_for(uint64_t need);
};

// The outputs a task writes to.
std::vector<size_t> task_outputs(const Task& task);

// Bytes [begin, end) of a source tensor.
struct SourceRange {
  const SourceTensor* tensor = nullptr;
  uint64_t begin = 0, end = 0;
  bool scale = false;  // a block-scale tensor (not read ahead: tasks read only the rows they use)
};
// The source bytes a task reads: its weights' rows or slots, and the whole of the (small) scale
// tensors it uses. What read-ahead asks for, and what a distributed plan counts per worker.
std::vector<SourceRange> task_reads(const Task& task);

// Buffer bytes a task holds while it runs (what the executor's memory budget counts).
uint64_t task_memory(const Task& task);
// The smallest ExecOptions::max_memory under which execute() takes `plan`: its largest task fits
// the in-flight share.
uint64_t memory_needed(const Plan& plan);
// Refuses a plan whose largest task does not fit the in-flight share of options.max_memory,
// naming that task and the smallest budget that holds the plan, or `at_least` where the caller
// needs more (what else it budgets).
void check_memory_budget(const Plan& plan, const ExecOptions& options, uint64_t at_least = 0);

// Row ranges of at most ~target_bytes of output each, cut at multiples of `align` rows.
std::vector<std::pair<int64_t, int64_t>> split_rows(int64_t rows, uint64_t row_bytes,
                                                    uint64_t target_bytes, int64_t align);

// Runs every task; the first error stops the run and is rethrown.
void execute(const Plan& plan, const TensorSource& source, TensorSink& sink,
             const ExecOptions& options = {});

}  // namespace moeckpt
