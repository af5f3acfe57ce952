// Folder-to-folder and in-memory conversions: thin layers over plan + execute.
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <optional>
#include <thread>
#include <tuple>

#include "adapter/plan_copy.hpp"
#include "adapter/quant_rules.hpp"
#include "adapter/validate.hpp"
#include "core/strict_json.hpp"
#include "io/checksum.hpp"
#include "io/file.hpp"
#include "job/output_folder.hpp"
#include "job/worker_folder.hpp"
#include "model/hf_tensor_names.hpp"
#include "moeckpt/adapter.hpp"
#include "moeckpt/distributed.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"

namespace moeckpt {
namespace fs = std::filesystem;

std::vector<NamedTensor> run_in_memory(const Plan& plan, const TensorSource& source,
                                       const ExecOptions& exec) {
  MemorySink sink(plan.outputs);
  execute(plan, source, sink, exec);
  std::vector<NamedTensor> out;
  for (size_t i = 0; i < plan.outputs.size(); ++i)
    out.push_back({plan.outputs[i].name, plan.outputs[i].dtype, plan.outputs[i].shape,
                   std::move(sink.buffers()[i])});
  return out;
}

std::vector<NamedTensor> convert_single_tensor_to_hf(const std::string& fqn, Dtype dtype,
                                                     const std::vector<uint64_t>& shape,
                                                     std::span<const uint8_t> bytes,
                                                     const ModelConfig& config,
                                                     const ToHfOptions& options,
                                                     int64_t expert_start) {
  MemorySource source({{fqn, dtype, shape, bytes}});
  ToHfOptions o = options;
  o.require_all_experts = false;
  o.single_tensor = true;
  auto plan = plan_to_hf(source, config, o, {expert_start});
  return run_in_memory(plan, source);
}

namespace {

// What the output bytes depend on: inputs (names, sizes, modification times and every tensor's
// place), the config, the options and the output layout. A resumed run must match it exactly.
// The inputs of a folder conversion: every file with its size and modification time.
std::string describe_inputs(const CheckpointSource& source) {
  std::string text;
  for (size_t p = 0; p < source.parts(); ++p) {
    const auto& ck = source.checkpoint(p);
    for (size_t i = 0; i < ck.shard_count(); ++i) {
      const auto& f = ck.shard(i);
      text += fmt::format("file {} {} {}\n", f.path(), f.size_at_open(), f.mtime_ns_at_open());
    }
  }
  return text;
}

// A source's tensors by part, then by name: the order a CheckpointSource lists them in (so the
// identity of a folder conversion is unchanged), and for tensors in memory one that does not
// depend on the order the caller gave them in, as their plan does not (ToHfOptions::order).
std::vector<const SourceTensor*> by_part_and_name(const TensorSource& source) {
  std::vector<const SourceTensor*> out;
  for (const auto& t : source.tensors()) out.push_back(&t);
  std::stable_sort(out.begin(), out.end(), [](const SourceTensor* a, const SourceTensor* b) {
    return std::tie(a->part, a->name) < std::tie(b->part, b->name);
  });
  return out;
}

// Tensors in memory have no file to date: their content is the identity (one pass over memory,
// a small cost next to writing the bytes out).
std::string describe_inputs(const MemorySource& source) {
  std::string text;
  for (const SourceTensor* t : by_part_and_name(source)) {
    const auto bytes = source.bytes(*t);
    text += "content " + t->name + " " +
            io::text_checksum({reinterpret_cast<const char*>(bytes.data()), bytes.size()}) + "\n";
  }
  return text;
}

std::string fingerprint(const TensorSource& source, const std::string& inputs,
                        const std::string& options, const std::string& config_text,
                        const std::vector<ShardLayout>& layout) {
  std::string text = "moeckpt 0.1.0\n" + options + "\n" + config_text + "\n" + inputs;
  for (const SourceTensor* t : by_part_and_name(source))
    text += fmt::format("tensor {} {} {} {} {}\n", t->name, dtype_name(t->dtype),
                        format_shape(t->shape), t->file, t->nbytes);
  for (const auto& sh : layout) {
    text += "shard " + sh.name + "\n";
    text.append(sh.header.begin(), sh.header.end());
  }
  return io::text_checksum(text);
}

// One output folder of a conversion: its plan and what identifies it for --resume.
struct FolderPlan {
  Plan plan;
  fs::path dst;
  std::string options_text;
  std::string config_text;
  std::vector<SideFile> extra_files{};  // besides config.json (a save's tokenizer files, ...)
};

// The small files the folder gets beside its shards: config.json first.
std::vector<SideFile> side_files(const FolderPlan& fp) {
  std::vector<SideFile> out{{kConfigFileName, fp.config_text}};
  out.insert(out.end(), fp.extra_files.begin(), fp.extra_files.end());
  return out;
}

// What the side files contribute to the fingerprint: config.json as it always did, the others
// by name and content checksum.
std::string side_identity(const std::vector<SideFile>& files) {
  std::string text = files.front().content;
  for (size_t i = 1; i < files.size(); ++i)
    text += "\nfile " + files[i].name + " " + io::text_checksum(files[i].content);
  return text;
}

// A conversion ready to write: its source, and one folder plan (several when every EP rank is
// written).
struct PreparedConversion {
  std::unique_ptr<TensorSource> owned;
  const TensorSource* source = nullptr;
  std::string inputs_text;
  std::vector<fs::path> srcs;
  std::vector<FolderPlan> folders;
  // The memory budget the inputs' indexes need to be parsed (index_budget_needed): a budget that
  // holds the tasks but not this would be refused again.
  uint64_t index_budget = 0;
};

ShardingOptions sharding_of(const Plan& plan, const ConvertOptions& convert) {
  ShardingOptions sharding;
  sharding.max_shard_bytes = convert.max_shard_bytes;
  sharding.metadata = plan.metadata;
  sharding.index_metadata = plan.index_metadata;
  sharding.file_of = plan.output_file;
  sharding.file_count = plan.output_files;
  return sharding;
}

// The shard each output lands in.
std::vector<size_t> shard_of_outputs(const std::vector<ShardLayout>& layout, size_t outputs) {
  std::vector<size_t> shard_of(outputs);
  for (size_t s = 0; s < layout.size(); ++s)
    for (size_t i : layout[s].tensors) shard_of[i] = s;
  return shard_of;
}

// Drops the tasks that write only into shards marked done (finished before, or another worker's).
void keep_tasks_of_open_shards(Plan& plan, const CheckpointWriter& writer,
                               const std::vector<bool>& done) {
  std::erase_if(plan.tasks, [&](const Task& t) {
    for (size_t out : task_outputs(t))
      if (!done[writer.shard_of(out)]) return false;
    return true;
  });
}

// Progress over the shards not marked done.
void report_progress(const CheckpointWriter& writer, const std::vector<bool>& done,
                     ProgressListener& progress, ExecOptions& exec) {
  std::vector<std::string> names;
  std::vector<uint64_t> bytes;
  for (size_t s = 0; s < writer.shard_count(); ++s) {
    names.push_back(writer.shard_name(s));
    bytes.push_back(done[s] ? 0 : writer.shard_data_bytes(s));
  }
  progress.start(names, bytes);
  exec.on_write = [&writer, &done, &progress](size_t out, uint64_t n) {
    const size_t s = writer.shard_of(out);
    if (!done[s]) progress.written(s, n);
  };
}

ConvertReport write_plan(Plan plan, const TensorSource& source, const std::string& inputs_text,
                         const std::vector<fs::path>& srcs, const fs::path& dst,
                         const std::string& options_text, const std::vector<SideFile>& sides,
                         const ConvertOptions& convert) {
  OutputFolder folder(dst, srcs, convert.existing);
  if (convert.on_start) convert.on_start();
  ShardingOptions sharding = sharding_of(plan, convert);
  const auto layout = layout_shards(plan.outputs, sharding);
  try {
    sharding.completed = folder.begin(
        layout, fingerprint(source, inputs_text, options_text, side_identity(sides), layout),
        sides);
    const size_t kept =
        static_cast<size_t>(std::count(sharding.completed.begin(), sharding.completed.end(), true));
    sharding.on_shard_committed = [&](size_t s, const std::string& sum) {
      folder.shard_committed(layout[s], sum);
    };
    CheckpointWriter writer(folder.write_dir(), plan.outputs, sharding);
    // Only the tasks that write into an unfinished shard run again.
    if (kept > 0) keep_tasks_of_open_shards(plan, writer, sharding.completed);
    WriterSink sink(writer);
    ExecOptions exec = convert.exec;
    if (convert.progress) report_progress(writer, sharding.completed, *convert.progress, exec);
    execute(plan, source, sink, exec);
    writer.commit();
    folder.finish();
    if (convert.progress) convert.progress->finish();
    uint64_t written = 0;
    for (size_t s = 0; s < layout.size(); ++s)
      if (!sharding.completed[s]) written += writer.shard_data_bytes(s);
    return {plan.outputs.size(),
            source.bytes_read(),
            written,
            writer.shard_count(),
            kept,
            writer.shard_count(),
            true,
            {}};
  } catch (const Interrupted&) {
    // Temporary files are gone with the writer; finished shards and the manifest stay for
    // --resume.
    throw Interrupted({ErrorKind::kInterrupted, dst.string(), "",
                       fmt::format("interrupted; the shards finished so far are kept: run the "
                                   "same command with {} to continue",
                                   option_ref(CallerOption::kResume)),
                       ""});
  } catch (...) {
    folder.abandon();
    throw;
  }
}

// This worker's part of a distributed conversion's folder: the shards `owner` gives it.
ConvertReport write_plan_as_worker(FolderPlan& fp, const std::vector<ShardLayout>& layout,
                                   const std::vector<int64_t>& owner, const std::string& print,
                                   const PreparedConversion& p, const ConvertOptions& convert) {
  WorkerFolder folder(fp.dst, p.srcs, convert.existing, convert.worker, convert.workers);
  if (convert.on_start) convert.on_start();
  ShardingOptions sharding = sharding_of(fp.plan, convert);
  sharding.write_index = false;
  sharding.completed = folder.begin(layout, owner, print, side_files(fp),
                                    index_text(layout, fp.plan.outputs, fp.plan.index_metadata));
  size_t own = 0;
  for (int64_t o : owner) own += o == convert.worker;
  try {
    sharding.on_shard_committed = [&](size_t s, const std::string& sum) {
      folder.shard_committed(layout[s], sum);
    };
    CheckpointWriter writer(fp.dst, fp.plan.outputs, sharding);
    keep_tasks_of_open_shards(fp.plan, writer, sharding.completed);
    WriterSink sink(writer);
    ExecOptions exec = convert.exec;
    if (convert.progress) report_progress(writer, sharding.completed, *convert.progress, exec);
    const uint64_t read_before = p.source->bytes_read();
    execute(fp.plan, *p.source, sink, exec);
    writer.commit();
    if (convert.progress) convert.progress->finish();
    uint64_t written = 0;
    size_t tensors = 0;  // in the shards this worker wrote (not the whole plan's)
    for (size_t s = 0; s < layout.size(); ++s)
      if (!sharding.completed[s]) {
        written += writer.shard_data_bytes(s);
        tensors += layout[s].tensors.size();
      }
    return {tensors,       p.source->bytes_read() - read_before,
            written,       writer.shard_count(),
            folder.kept(), own,
            false,         {}};
  } catch (const Interrupted&) {
    folder.record_failure("interrupted");
    throw Interrupted(
        {ErrorKind::kInterrupted, fp.dst.string(), "",
         fmt::format("worker {} of {} interrupted; its finished shards are kept: "
                     "relaunch the same command with {}",
                     convert.worker, convert.workers, option_ref(CallerOption::kResume)),
         ""});
  } catch (const std::exception& e) {
    folder.record_failure(e.what());
    throw;
  }
}

void add(ConvertReport& total, const ConvertReport& r) {
  total.tensors += r.tensors;
  total.bytes_in += r.bytes_in;
  total.bytes_out += r.bytes_out;
  total.shards += r.shards;
  total.shards_kept += r.shards_kept;
  total.own_shards += r.own_shards;
}

// Every folder's shard layout, and the worker of each shard: one assignment over all folders, so
// that work balances across EP rank folders too.
struct Distribution {
  std::vector<std::vector<ShardLayout>> layouts;
  std::vector<std::vector<int64_t>> owners;
};
Distribution distribute(const PreparedConversion& p, const ConvertOptions& convert,
                        int64_t workers) {
  Distribution d;
  std::vector<uint64_t> sizes;
  for (const auto& fp : p.folders) {
    d.layouts.push_back(layout_shards(fp.plan.outputs, sharding_of(fp.plan, convert)));
    for (const auto& sh : d.layouts.back()) sizes.push_back(sh.file_size);
  }
  if (!convert.shard_owners.empty() && convert.shard_owners.size() != sizes.size())
    fail(ErrorKind::kInvalidArgument, "", "",
         fmt::format("{} shard owners for {} output shards", convert.shard_owners.size(),
                     sizes.size()),
         "one worker per shard of the plan");
  for (int64_t o : convert.shard_owners)
    if (o < 0 || o >= workers)
      fail(ErrorKind::kInvalidArgument, "", "",
           fmt::format("shard owner {} is not a worker of {}", o, workers));
  const auto owner =
      convert.shard_owners.empty() ? assign_shards(sizes, workers) : convert.shard_owners;
  size_t i = 0;
  for (const auto& layout : d.layouts) {
    d.owners.emplace_back(owner.begin() + static_cast<std::ptrdiff_t>(i),
                          owner.begin() + static_cast<std::ptrdiff_t>(i + layout.size()));
    i += layout.size();
  }
  return d;
}

// Resuming a conversion of several folders (every EP rank's): a folder finished before (its index
// or single file there, no records) is kept as it is.
bool finished_before(const FolderPlan& fp, const ConvertOptions& convert, size_t folders) {
  if (folders < 2 || convert.existing != ExistingOutput::kResume) return false;
  std::error_code ec;
  const bool checkpoint =
      fs::exists(fp.dst / kIndexFileName, ec) || fs::exists(fp.dst / kSingleFileName, ec);
  return checkpoint && !fs::exists(fp.dst / kManifestFileName, ec) &&
         !has_distributed_records(fp.dst);
}

// Refuses, before anything is written, a conversion whose plans do not fit the memory budget,
// naming the smallest budget that holds every folder's plan and the inputs' indexes.
void refuse_beyond_budget(const PreparedConversion& p, const ExecOptions& exec) {
  uint64_t need = p.index_budget;
  for (const auto& fp : p.folders) need = std::max(need, memory_needed(fp.plan));
  if (need <= exec.max_memory) return;
  for (const auto& fp : p.folders) check_memory_budget(fp.plan, exec, need);
}

// A worker relaunched to resume into a folder that another worker of the relaunch completed
// before this one took its lock (any worker completes a folder once every shard is recorded, and
// a kept shard is recorded before its worker starts again): nothing is left to do. Known by the
// index this plan writes and this worker's own shards (size and header bytes) being there, with
// no records left. (Where the caller completes the folders after its barrier, no worker can have.)
bool completed_by_peer(const FolderPlan& fp, const std::vector<ShardLayout>& layout,
                       const std::vector<int64_t>& owner, const ConvertOptions& convert) {
  if (convert.existing != ExistingOutput::kResume || !convert.finalize) return false;
  std::error_code ec;
  if (has_distributed_records(fp.dst) || fs::exists(fp.dst / kManifestFileName, ec)) return false;
  if (const auto index = index_text(layout, fp.plan.outputs, fp.plan.index_metadata)) {
    const auto path = fp.dst / kIndexFileName;
    const auto size = fs::file_size(path, ec);
    if (ec || size != index->size() || io::read_small_file(path, size) != *index) return false;
  } else if (!present(fp.dst / kSingleFileName)) {
    return false;
  }
  for (size_t s = 0; s < layout.size(); ++s)
    if (owner[s] == convert.worker &&
        !starts_with_bytes(fp.dst / layout[s].name, layout[s].header, layout[s].file_size))
      return false;
  return true;
}

// write_plan_as_worker, unless the folder is already this conversion's finished checkpoint (an EP
// rank's finished before, resuming every rank) or becomes it: a resuming worker whose folder a
// peer of the same relaunch completes (or is completing) as it starts waits for that to end, then
// finds the finished checkpoint (nullopt: nothing left to do), or the refusal stands.
std::optional<ConvertReport> write_or_find_completed(
    FolderPlan& fp, const std::vector<ShardLayout>& layout, const std::vector<int64_t>& owner,
    const std::string& print, const PreparedConversion& p, const ConvertOptions& convert) {
  const auto deadline = std::chrono::steady_clock::now() + convert.wait;
  const auto finalize_lock = fp.dst / kFinalizeLockName;
  if (completed_by_peer(fp, layout, owner, convert)) return std::nullopt;
  for (int attempt = 0;; ++attempt) {
    try {
      return write_plan_as_worker(fp, layout, owner, print, p, convert);
    } catch (const FolderCompletedElsewhere&) {
      while (io::DirectoryLock::is_held(finalize_lock) &&
             std::chrono::steady_clock::now() < deadline &&
             !(convert.exec.cancel && convert.exec.cancel->load()))
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      if (completed_by_peer(fp, layout, owner, convert)) return std::nullopt;
      // A completion that stopped leaves the records: resumed like any unfinished folder.
      if (attempt >= 2 || io::DirectoryLock::is_held(finalize_lock) ||
          !has_distributed_records(fp.dst))
        throw;
    }
  }
}

ConvertReport write_prepared(PreparedConversion& p, const ConvertOptions& convert) {
  // Every worker refuses alike (the whole plan, not its share), before it claims the folder.
  refuse_beyond_budget(p, convert.exec);
  ConvertReport total;
  if (convert.workers == 0 && p.folders.size() > 1 &&
      std::all_of(p.folders.begin(), p.folders.end(), [&](const FolderPlan& fp) {
        return finished_before(fp, convert, p.folders.size());
      }))
    fail(ErrorKind::kDestination, p.folders.front().dst.parent_path().string(), "",
         "every folder of this conversion holds a finished checkpoint: nothing to resume");
  if (convert.workers == 0) {
    for (auto& fp : p.folders)
      if (!finished_before(fp, convert, p.folders.size()))
        add(total, write_plan(std::move(fp.plan), *p.source, p.inputs_text, p.srcs, fp.dst,
                              fp.options_text, side_files(fp), convert));
    total.bytes_in = p.source->bytes_read();
    total.own_shards = total.shards;
    return total;
  }
  check_worker_count(convert.workers, "workers");
  if (convert.worker < 0 || convert.worker >= convert.workers)
    fail(ErrorKind::kInvalidArgument, "", "",
         fmt::format("worker {} of {} is not a worker of the run", convert.worker, convert.workers),
         "a worker index in [0, workers)");
  const auto d = distribute(p, convert, convert.workers);
  // Each folder's fingerprint: the same on every worker (a pure function of inputs and options).
  std::vector<std::string> prints;
  for (size_t f = 0; f < p.folders.size(); ++f)
    // The worker count is part of it: two launches with other counts never mix their files.
    prints.push_back(fingerprint(*p.source, p.inputs_text, p.folders[f].options_text,
                                 side_identity(side_files(p.folders[f])), d.layouts[f]) +
                     fmt::format("-w{}", convert.workers));
  std::vector<bool> skipped(p.folders.size(), false);
  std::vector<size_t> own(p.folders.size(), 0);
  for (size_t f = 0; f < p.folders.size(); ++f) {
    // A folder finished before (an EP rank's, resuming every rank), or by a peer of this relaunch.
    const auto r =
        write_or_find_completed(p.folders[f], d.layouts[f], d.owners[f], prints[f], p, convert);
    skipped[f] = !r;
    if (!r) continue;
    own[f] = r->own_shards;
    add(total, *r);
  }
  total.finalized = false;
  if (!convert.finalize) return total;  // the caller completes the folders after its barrier
  // Whichever worker finds every shard recorded once its own are done completes the folder, so
  // the last to finish does, whatever the order the workers ran in (a job array runs them one
  // after another). Worker 0 first waits for workers still running: it completes the folder
  // itself then, or names a worker that stopped.
  const auto deadline = std::chrono::steady_clock::now() + convert.wait;
  bool complete = true;
  for (size_t f = 0; f < p.folders.size(); ++f) {
    if (skipped[f]) continue;
    const auto& dst = p.folders[f].dst;
    WorkerCompletion c;
    // A worker without shards here looks too once a job record is there: a worker that found
    // every shard recorded may have left the folder to it, having found its lock held.
    if (own[f] > 0 || present(dst / kJobFileName)) {
      c = complete_as_worker(dst, convert.worker == 0, convert.exec.cancel, deadline);
    } else if (present(dst / kIndexFileName)) {
      c.complete = true;
    } else {
      // No worker with shards has started here yet (the first one writes the job record).
      c.pending =
          "this worker owns none of its shards; the last worker to finish completes the "
          "folder, or moeckpt finalize " +
          dst.string() + " once every worker is done";
    }
    complete = complete && c.complete;
    if (!c.complete) total.pending.push_back(dst.string() + " is not complete yet: " + c.pending);
  }
  total.finalized = complete;
  return total;
}

// config.json of an HF output: quantization_config present exactly when FP8 is written.
std::string hf_config_text(const ModelConfig& config, const ToHfOptions& options) {
  nlohmann::json out_config = config.raw;
  const auto spec = model_spec_for(config);
  const auto mode = effective_quant(options);
  if (!export_writes_fp8(*spec, options)) {
    out_config.erase("quantization_config");
    // A fused-QKV source written with split q/k/v projections: the config says so, so the
    // output reads back (and fails no layout check) as the split layout it is.
    spec->rewrite_export_config(out_config, mode != QuantMode::kNone);
  } else if (!out_config.contains("quantization_config")) {
    out_config["quantization_config"] = {{"activation_scheme", "dynamic"},
                                         {"fmt", "e4m3"},
                                         {"quant_method", "fp8"},
                                         {"weight_block_size", {128, 128}}};
  }
  return out_config.dump(2) + "\n";
}

std::string to_hf_options_text(const ToHfOptions& options, const std::vector<int64_t>& starts) {
  std::string text =
      fmt::format("to-hf quant {} compat {} attn {} exclude {} prefix {} require_all {}",
                  static_cast<int>(effective_quant(options)), compat_name(options.compat),
                  attn_backend_name(options.attn_backend),
                  options.exclude_regex ? "=" + *options.exclude_regex : "-",
                  options.prefix ? "=" + *options.prefix : "-", options.require_all_experts);
  for (const auto& s : starts) text += fmt::format(" start {}", s);
  return text;
}

// kMetaSourceFingerprint of an HF source: the same for every EP rank converted from it, different
// for another checkpoint of the same architecture (its norms, routers and scales differ).
std::string source_fingerprint(const CheckpointSource& source, const ModelSpec& spec,
                               const std::string& config_text) {
  constexpr uint64_t kSmall = 4ull << 20;
  std::string text = "config " + io::text_checksum(config_text) + "\n";
  for (const auto& t : source.tensors()) {
    text += fmt::format("{} {} {}", t.name, dtype_name(t.dtype), format_shape(t.shape));
    if (t.nbytes <= kSmall || spec.is_block_scale(t.name)) {
      const auto bytes = source.read_all(t);
      text += " " + io::text_checksum({reinterpret_cast<const char*>(bytes.data()), bytes.size()});
    }
    text += "\n";
  }
  return io::text_checksum(text);
}

// Parsing JSON costs about 15x the file (a DOM of small nodes: a 38 MB config peaked at 545 MB).
// An input's index must fit the memory budget the way a task buffer does (within the budget and
// the 48 MiB left for everything else), or it is refused before it is read.
constexpr uint64_t kJsonBytesPerFileByte = 15;
constexpr uint64_t kMetadataAllowance = 48ull << 20;

// The memory budget parsing `dir`'s index needs (0 without an index); a smaller one is refused
// before the index is read.
uint64_t index_budget_needed(const fs::path& dir, const ExecOptions& exec) {
  std::error_code ec;
  const auto path = dir / kIndexFileName;
  const auto size = fs::file_size(path, ec);
  if (ec) return 0;  // no index (or unreadable: opening it reports that)
  const uint64_t need = size * kJsonBytesPerFileByte;
  const uint64_t budget = need > kMetadataAllowance ? need - kMetadataAllowance : 0;
  // Only the index is known before it is parsed: a plan needing more is named once it is made.
  if (budget > exec.max_memory)
    fail(ErrorKind::kMalformedFile, path.string(), "",
         fmt::format("an index of {} bytes needs about {} MB of memory to parse, beyond the memory "
                     "budget of {} bytes",
                     size, need >> 20, exec.max_memory),
         fmt::format("a memory budget of at least {} bytes: {}", budget,
                     option_ref(CallerOption::kMaxMemory, std::to_string(budget))));
  return budget;
}

// Tasks small enough that several fit the memory budget at once: about a 32nd of it, at least
// kSmallestTaskBytes.
constexpr uint64_t kSmallestTaskBytes = 64ull << 10;
template <class Options>
Options within_budget(Options o, const ExecOptions& exec) {
  o.task_bytes = std::min(o.task_bytes, std::max(exec.max_memory / 32, kSmallestTaskBytes));
  return o;
}

// The plan `make(options)` at the budget's task size, or, when one of its tasks does not fit the
// budget (an expert slot or a whole small tensor does not shrink with the task size), at the
// smallest task size. No task needs less at a larger task size, so the budgets this takes are
// exactly those from memory_needed() of the smallest split up: the one a refusal names
// (refuse_beyond_budget) works, and one byte less does not.
template <class Options, class MakePlan>
Plan plan_within_budget(const Options& options, const ExecOptions& exec, MakePlan&& make) {
  Options o = within_budget(options, exec);
  Plan plan = make(o);
  const uint64_t smallest = std::min(options.task_bytes, kSmallestTaskBytes);
  if (o.task_bytes == smallest || memory_needed(plan) <= exec.max_memory) return plan;
  o.task_bytes = smallest;
  // The first plan made every refusal planning makes; the scales need no second scan.
  if constexpr (requires { o.prescan_scales; }) o.prescan_scales = false;
  return make(o);
}

int64_t parse_meta_int(const std::map<std::string, std::string>& md, const char* key,
                       const std::string& where) {
  auto it = md.find(key);
  int64_t v = -1;
  if (it == md.end()) return -1;
  auto [p, e] = std::from_chars(it->second.data(), it->second.data() + it->second.size(), v);
  if (e != std::errc() || p != it->second.data() + it->second.size() || v < 0)
    fail(ErrorKind::kMalformedFile, where, "",
         fmt::format("__metadata__ {} = \"{}\" is not a count", key, it->second));
  return v;
}

}  // namespace

std::string ep_rank_folder_name(int64_t ep_rank, int64_t ep_size) {
  return fmt::format("ep-rank-{}-of-{}", ep_rank, ep_size);
}

namespace {

// A placeholder of the fingerprint's length: a plan made from headers alone has the same shard
// sizes without reading what the fingerprint covers.
const std::string kUnreadFingerprint(32, '0');

PreparedConversion prepare_from_hf(const fs::path& src, const fs::path& dst,
                                   const FromHfOptions& options, const ExecOptions& exec,
                                   bool headers_only) {
  // Parsed from the bytes that are copied to the output, read once.
  const auto config_path = checkpoint_config_path(src);
  auto config_text = io::read_small_file(config_path, kMaxConfigBytes);
  ModelConfig config = ModelConfig::parse(
      parse_strict_json(config_text, config_path.string(), "config"), config_path.string());
  PreparedConversion p;
  p.index_budget = index_budget_needed(src, exec);
  auto source = std::make_unique<CheckpointSource>(std::vector<fs::path>{src});
  p.source = source.get();
  const bool every_rank = options.ep_rank == FromHfOptions::kEveryRank;
  if (every_rank && options.ep_size < 2)
    fail(ErrorKind::kInvalidArgument, "", "", "writing every EP rank's folder needs an EP size",
         "an EP size of at least 2");
  std::optional<std::string> source_print;
  const int64_t first = every_rank ? 0 : options.ep_rank;
  const int64_t last = every_rank ? options.ep_size : options.ep_rank + 1;
  for (int64_t r = first; r < last; ++r) {
    FromHfOptions o = options;
    o.ep_rank = r;
    if (headers_only) o.prescan_scales = false;
    FolderPlan fp{
        plan_within_budget(
            o, exec, [&](const FromHfOptions& x) { return plan_from_hf(*source, config, x); }),
        every_rank ? dst / ep_rank_folder_name(r, options.ep_size) : dst,
        fmt::format("from-hf ep {}/{} dtype {} compat {} attn {}", r, options.ep_size,
                    dtype_name(options.dtype), compat_name(options.compat),
                    attn_backend_name(options.attn_backend)),
        config_text};
    if (!source_print)
      source_print = headers_only
                         ? kUnreadFingerprint
                         : source_fingerprint(*source, *model_spec_for(config), config_text);
    fp.plan.metadata[kMetaSourceFingerprint] = *source_print;
    p.folders.push_back(std::move(fp));
  }
  p.inputs_text = describe_inputs(*source);
  p.srcs = {src};
  p.owned = std::move(source);
  return p;
}

PreparedConversion prepare_dequantize(const fs::path& src, const fs::path& dst,
                                      const FromHfOptions& options, const ExecOptions& exec,
                                      bool headers_only) {
  const auto config_path = checkpoint_config_path(src);
  const auto config_text = io::read_small_file(config_path, kMaxConfigBytes);
  auto config_json = parse_strict_json(config_text, config_path.string(), "config");
  ModelConfig config = ModelConfig::parse(config_json, config_path.string());
  PreparedConversion p;
  p.index_budget = index_budget_needed(src, exec);
  auto source = std::make_unique<CheckpointSource>(std::vector<fs::path>{src});
  p.source = source.get();
  FromHfOptions o = options;
  o.group_experts = false;
  o.ep_size = 1;
  o.ep_rank = 0;
  if (headers_only) o.prescan_scales = false;
  config_json.erase("quantization_config");
  p.folders.push_back(
      {plan_within_budget(o, exec,
                          [&](const FromHfOptions& x) { return plan_from_hf(*source, config, x); }),
       dst,
       fmt::format("dequantize dtype {} compat {}", dtype_name(o.dtype), compat_name(o.compat)),
       config_json.dump(2) + "\n"});
  p.inputs_text = describe_inputs(*source);
  p.srcs = {src};
  p.owned = std::move(source);
  return p;
}

PreparedConversion prepare_quantize(const fs::path& src, const fs::path& dst,
                                    const ToHfOptions& options, const ExecOptions& exec) {
  ModelConfig config = ModelConfig::load(checkpoint_config_path(src));
  PreparedConversion p;
  p.index_budget = index_budget_needed(src, exec);
  auto source = std::make_unique<CheckpointSource>(std::vector<fs::path>{src});
  p.source = source.get();
  ToHfOptions o = options;
  o.hf_source = true;
  if (effective_quant(o) == QuantMode::kNone)
    fail(ErrorKind::kInvalidArgument, "", "", "quantize needs a quantization mode",
         "block or cast");
  p.folders.push_back(
      {plan_within_budget(
           o, exec, [&](const ToHfOptions& x) { return plan_to_hf(*source, config, x, {0}); }),
       dst, "quantize " + to_hf_options_text(o, {0}), hf_config_text(config, o)});
  p.inputs_text = describe_inputs(*source);
  p.srcs = {src};
  p.owned = std::move(source);
  return p;
}

// The output file of each planned output: its own tensor's in the save, or (a block scale) its
// weight's.
void place_as_saved(Plan& plan, const Checkpoint& ck) {
  const ShardedSave& save = *ck.sharded_save();
  plan.output_files = static_cast<size_t>(save.output_files);
  for (const auto& o : plan.outputs) {
    const auto* e = ck.find(o.name);
    if (!e && o.name.ends_with(kBlockScaleSuffix))
      e = ck.find(std::string_view(o.name).substr(0, o.name.size() - kBlockScaleSuffix.size()));
    plan.output_file.push_back(e ? static_cast<size_t>(e->pieces->output_file - 1) : 0);
  }
}

// The largest file of a save's .hf_metadata/ copied (a tokenizer.json is tens of MB).
constexpr uint64_t kMaxSideFileBytes = 512ull << 20;

PreparedConversion prepare_consolidate(const fs::path& src, const fs::path& dst,
                                       const ConsolidateOptions& options, const ExecOptions& exec) {
  auto source = std::make_unique<CheckpointSource>(std::vector<fs::path>{src}, options.dtype);
  const Checkpoint& ck = source->checkpoint(0);
  if (!ck.sharded_save())
    fail(ErrorKind::kInvalidArgument, src.string(), "",
         "is not a sharded save (a checkpoint folder: convert it with quantize or dequantize)",
         "shard-RRRRR-model-IIIII-of-NNNNN.safetensors files of a DCP save");
  const auto config_path =
      options.config
          ? *options.config
          : ck.sharded_save()->config.value_or(src / kShardedMetadataDir / "config.json");
  std::error_code ec;
  if (!options.config && !fs::exists(config_path, ec))
    fail(ErrorKind::kMalformedFile, config_path.string(), "",
         "is missing: the save has no config.json (give the model's config.json)",
         "the save's .hf_metadata/config.json, or the model's config.json given");
  const auto config_text = io::read_small_file(config_path, kMaxConfigBytes);
  auto config_json = parse_strict_json(config_text, config_path.string(), "config");
  PreparedConversion p;
  p.source = source.get();
  const std::string cast = options.dtype ? std::string(dtype_name(*options.dtype)) : "none";
  if (options.quant == QuantMode::kNone) {
    // Any model consolidates; a family moeckpt knows has its shapes checked (a missing trailing
    // piece shrinks a tensor, which no piece's offsets show).
    if (ModelConfig::names_known_family(config_json)) {
      const ModelConfig config = ModelConfig::parse(config_json, config_path.string());
      check_shapes_against_config(*source, *model_spec_for(config));
    }
    ConsolidateOptions o = options;
    p.folders.push_back({plan_within_budget(o, exec,
                                            [&](const ConsolidateOptions& x) {
                                              return plan_copy(*source, x.task_bytes);
                                            }),
                         dst, "consolidate cast " + cast, config_text});
  } else {
    const ModelConfig config = ModelConfig::parse(config_json, config_path.string());
    ToHfOptions o;
    o.quant = options.quant;
    o.hf_source = true;
    o.task_bytes = options.task_bytes;
    p.folders.push_back(
        {plan_within_budget(
             o, exec, [&](const ToHfOptions& x) { return plan_to_hf(*source, config, x, {0}); }),
         dst, "consolidate cast " + cast + " quantize " + to_hf_options_text(o, {0}),
         hf_config_text(config, o)});
  }
  if (options.save_layout) place_as_saved(p.folders.back().plan, ck);
  // The save's tokenizer and other HF files go beside config.json, as Automodel's consolidation
  // copies them (written with the shards, before the index).
  for (const auto& f : ck.sharded_save()->other_files)
    p.folders.back().extra_files.push_back(
        {f.filename().string(), io::read_small_file(f, kMaxSideFileBytes)});
  p.inputs_text = describe_inputs(*source);
  p.srcs = {src};
  p.owned = std::move(source);
  return p;
}

}  // namespace

ConvertReport consolidate_dir(const fs::path& src, const fs::path& dst,
                              const ConsolidateOptions& options, const ConvertOptions& convert) {
  auto p = prepare_consolidate(src, dst, options, convert.exec);
  return write_prepared(p, convert);
}

ConvertReport from_hf_dir(const fs::path& src, const fs::path& dst, const FromHfOptions& options,
                          const ConvertOptions& convert) {
  auto p = prepare_from_hf(src, dst, options, convert.exec, false);
  return write_prepared(p, convert);
}

ConvertReport dequantize_dir(const fs::path& src, const fs::path& dst, const FromHfOptions& options,
                             const ConvertOptions& convert) {
  auto p = prepare_dequantize(src, dst, options, convert.exec, false);
  return write_prepared(p, convert);
}

ConvertReport quantize_dir(const fs::path& src, const fs::path& dst, const ToHfOptions& options,
                           const ConvertOptions& convert) {
  auto p = prepare_quantize(src, dst, options, convert.exec);
  return write_prepared(p, convert);
}

DistributionPlan plan_distribution(FolderCommand command, const fs::path& src,
                                   const FromHfOptions& from_hf, const ToHfOptions& to_hf,
                                   uint64_t max_shard_bytes, int64_t workers) {
  check_worker_count(workers, "workers");
  ConvertOptions convert;
  convert.max_shard_bytes = max_shard_bytes;
  const fs::path dst;
  auto p = command == FolderCommand::kFromHf
               ? prepare_from_hf(src, dst, from_hf, convert.exec, true)
           : command == FolderCommand::kDequantize
               ? prepare_dequantize(src, dst, from_hf, convert.exec, true)
               : prepare_quantize(src, dst, to_hf, convert.exec);
  const auto d = distribute(p, convert, workers);
  DistributionPlan out;
  out.command = command == FolderCommand::kFromHf       ? "from-hf"
                : command == FolderCommand::kDequantize ? "dequantize"
                                                        : "quantize";
  out.workers.resize(static_cast<size_t>(workers));
  // Distinct source bytes: byte ranges merged per tensor, per worker and overall.
  using Ranges = std::map<const SourceTensor*, std::vector<std::pair<uint64_t, uint64_t>>>;
  std::vector<Ranges> reads(static_cast<size_t>(workers));
  for (size_t f = 0; f < p.folders.size(); ++f) {
    const auto& fp = p.folders[f];
    const auto& layout = d.layouts[f];
    out.folders.push_back(fp.dst.string());
    const auto shard_of = shard_of_outputs(layout, fp.plan.outputs.size());
    for (size_t s = 0; s < layout.size(); ++s) {
      auto& w = out.workers[static_cast<size_t>(d.owners[f][s])];
      w.output_bytes += layout[s].file_size;
      w.shards.push_back(fp.dst.empty() ? layout[s].name : (fp.dst / layout[s].name).string());
      out.output_bytes += layout[s].file_size;
      ++out.shards;
    }
    for (const auto& t : fp.plan.tasks) {
      std::vector<int64_t> who;
      for (size_t o : task_outputs(t)) who.push_back(d.owners[f][shard_of[o]]);
      std::sort(who.begin(), who.end());
      who.erase(std::unique(who.begin(), who.end()), who.end());
      for (const auto& r : task_reads(t))
        for (int64_t w : who) reads[static_cast<size_t>(w)][r.tensor].push_back({r.begin, r.end});
    }
  }
  auto merged_bytes = [](std::vector<std::pair<uint64_t, uint64_t>> v) {
    std::sort(v.begin(), v.end());
    uint64_t n = 0, end = 0;
    for (const auto& [b, e] : v) {
      const uint64_t from = std::max(b, end);
      if (e > from) n += e - from;
      end = std::max(end, e);
    }
    return n;
  };
  Ranges all;
  for (size_t w = 0; w < reads.size(); ++w)
    for (auto& [t, v] : reads[w]) {
      out.workers[w].input_bytes += merged_bytes(v);
      auto& a = all[t];
      a.insert(a.end(), v.begin(), v.end());
    }
  for (auto& [t, v] : all) out.input_bytes += merged_bytes(std::move(v));
  return out;
}

ConvertReport to_hf_dirs(const std::vector<fs::path>& srcs, const fs::path& dst,
                         const ToHfOptions& options, const std::optional<fs::path>& config_path,
                         const ConvertOptions& convert) {
  if (srcs.empty()) fail(ErrorKind::kInvalidArgument, "", "", "no input folder");
  const fs::path cfg = config_path ? *config_path : srcs.front() / "config.json";
  ModelConfig config = ModelConfig::load(cfg);
  uint64_t index_budget = 0;
  for (const auto& s : srcs)
    index_budget = std::max(index_budget, index_budget_needed(s, convert.exec));
  CheckpointSource source(srcs);
  std::vector<int64_t> starts;
  for (size_t p = 0; p < srcs.size(); ++p) {
    auto md = source.metadata(p);
    int64_t start = parse_meta_int(md, kMetaExpertStart, srcs[p].string());
    if (start < 0) {
      if (srcs.size() > 1)
        fail(ErrorKind::kConfigMismatch, srcs[p].string(), "",
             "has no moeckpt metadata, so which experts it holds is unknown",
             "the EP rank folders written by moeckpt from-hf, or one folder with all experts");
      start = 0;
    }
    starts.push_back(start);
  }
  // Rank folders of one conversion: the same source, the same config.
  if (srcs.size() > 1) {
    const auto md0 = source.metadata(0);
    const auto config0 =
        parse_strict_json(io::read_small_file(srcs[0] / "config.json", kMaxConfigBytes),
                          (srcs[0] / "config.json").string(), "config");
    for (size_t p = 1; p < srcs.size(); ++p) {
      const auto md = source.metadata(p);
      const auto a = md0.find(kMetaSourceFingerprint), b = md.find(kMetaSourceFingerprint);
      const bool ha = a != md0.end(), hb = b != md.end();
      if (ha != hb || (ha && a->second != b->second))
        fail(ErrorKind::kConfigMismatch, srcs[p].string(), "",
             fmt::format("was converted from another checkpoint than {} (__metadata__ {} = \"{}\", "
                         "there \"{}\")",
                         srcs[0].string(), kMetaSourceFingerprint, hb ? b->second : "",
                         ha ? a->second : ""),
             "the EP rank folders of one from-hf conversion");
      const auto cp = srcs[p] / "config.json";
      if (parse_strict_json(io::read_small_file(cp, kMaxConfigBytes), cp.string(), "config") !=
          config0)
        fail(ErrorKind::kConfigMismatch, cp.string(), "",
             "differs from " + (srcs[0] / "config.json").string(),
             "the same config.json in every EP rank folder");
    }
  }
  PreparedConversion p;
  p.source = &source;
  p.inputs_text = describe_inputs(source);
  p.srcs = srcs;
  p.index_budget = index_budget;
  p.folders.push_back({plan_within_budget(options, convert.exec,
                                          [&](const ToHfOptions& x) {
                                            return plan_to_hf(source, config, x, starts);
                                          }),
                       dst, to_hf_options_text(options, starts), hf_config_text(config, options)});
  return write_prepared(p, convert);
}

ConvertReport to_hf_dir_from_memory(const MemorySource& native, const ModelConfig& config,
                                    const fs::path& dst, const ToHfOptions& options,
                                    int64_t expert_start, const ConvertOptions& convert) {
  return to_hf_dir_from_source(native, describe_inputs(native), config, dst, options, expert_start,
                               convert);
}

ExportDistribution plan_export_distribution(const TensorSource& native, const ModelConfig& config,
                                            const ToHfOptions& options,
                                            const std::vector<std::string>& split,
                                            uint64_t max_shard_bytes, int64_t workers) {
  check_worker_count(workers, "workers");
  ConvertOptions convert;
  convert.max_shard_bytes = max_shard_bytes;
  const Plan plan = plan_to_hf(native, config, within_budget(options, convert.exec), {0});
  const auto layout = layout_shards(plan.outputs, sharding_of(plan, convert));
  const auto shard_of = shard_of_outputs(layout, plan.outputs.size());
  // Per shard and worker: the split rows its tasks read; per shard, split reads [tensor] -> rows.
  std::map<const SourceTensor*, std::string> split_tensors;
  for (const auto& name : split) {
    const auto* t = native.find(name);
    if (!t || t->shape.empty() || t->shape[0] == 0)
      fail(ErrorKind::kInvalidArgument, "", name, "is not a tensor of the state dict to split");
    split_tensors[t] = name;
  }
  std::vector<std::vector<uint64_t>> weight(layout.size(),
                                            std::vector<uint64_t>(static_cast<size_t>(workers), 0));
  std::vector<std::map<std::string, std::pair<int64_t, int64_t>>> reads(layout.size());
  for (const auto& task : plan.tasks) {
    std::vector<size_t> shards;
    for (size_t o : task_outputs(task)) shards.push_back(shard_of[o]);
    for (const auto& r : task_reads(task)) {
      auto it = split_tensors.find(r.tensor);
      if (it == split_tensors.end() || r.end <= r.begin) continue;
      const uint64_t row_bytes = r.tensor->nbytes / r.tensor->shape[0];
      const int64_t lo = static_cast<int64_t>(r.begin / row_bytes);
      const int64_t hi = static_cast<int64_t>((r.end + row_bytes - 1) / row_bytes);
      for (size_t s : shards) {
        auto [pos, fresh] = reads[s].try_emplace(it->second, lo, hi);
        if (!fresh)
          pos->second = {std::min(pos->second.first, lo), std::max(pos->second.second, hi)};
        for (int64_t k = 0; k < workers; ++k) {
          const auto range =
              ExpertRange::for_rank(static_cast<int64_t>(r.tensor->shape[0]), workers, k);
          const int64_t a = std::max(lo, range.first), b = std::min(hi, range.first + range.count);
          if (b > a) weight[s][static_cast<size_t>(k)] += static_cast<uint64_t>(b - a) * row_bytes;
        }
      }
    }
  }
  ExportDistribution d;
  d.rows_needed.resize(static_cast<size_t>(workers));
  for (size_t s = 0; s < layout.size(); ++s) {
    d.shards.push_back(layout[s].name);
    const auto& w = weight[s];
    const int64_t owner = std::max_element(w.begin(), w.end()) - w.begin();  // first of equals
    d.owners.push_back(owner);
    for (const auto& [name, rows] : reads[s]) {
      auto [pos, fresh] = d.rows_needed[static_cast<size_t>(owner)].try_emplace(name, rows);
      if (!fresh)
        pos->second = {std::min(pos->second.first, rows.first),
                       std::max(pos->second.second, rows.second)};
    }
  }
  return d;
}

ConvertReport to_hf_dir_from_source(const TensorSource& native, const std::string& inputs_text,
                                    const ModelConfig& config, const fs::path& dst,
                                    const ToHfOptions& options, int64_t expert_start,
                                    const ConvertOptions& convert) {
  PreparedConversion p;
  p.source = &native;
  p.inputs_text = inputs_text;
  p.folders.push_back(
      {plan_within_budget(
           options, convert.exec,
           [&](const ToHfOptions& x) { return plan_to_hf(native, config, x, {expert_start}); }),
       dst, to_hf_options_text(options, {expert_start}), hf_config_text(config, options)});
  return write_prepared(p, convert);
}

}  // namespace moeckpt
