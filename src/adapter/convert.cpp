// Folder-to-folder and in-memory conversions: thin layers over plan + execute.
#include <fmt/format.h>

#include <algorithm>
#include <charconv>

#include "adapter/output_folder.hpp"
#include "core/strict_json.hpp"
#include "io/checksum.hpp"
#include "io/file.hpp"
#include "moeckpt/adapter.hpp"
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

// Tensors in memory have no file to date: their content is the identity (one pass over memory,
// a small cost next to writing the bytes out).
std::string describe_inputs(const MemorySource& source) {
  std::string text;
  for (const auto& t : source.tensors())
    text += "content " + t.name + " " +
            io::text_checksum(
                {reinterpret_cast<const char*>(source.bytes(t).data()), source.bytes(t).size()}) +
            "\n";
  return text;
}

std::string fingerprint(const TensorSource& source, const std::string& inputs,
                        const std::string& options, const std::string& config_text,
                        const std::vector<ShardLayout>& layout) {
  std::string text = "moeckpt 0.1.0\n" + options + "\n" + config_text + "\n" + inputs;
  for (const auto& t : source.tensors())
    text += fmt::format("tensor {} {} {} {} {}\n", t.name, dtype_name(t.dtype),
                        format_shape(t.shape), t.file, t.nbytes);
  for (const auto& sh : layout) {
    text += "shard " + sh.name + "\n";
    text.append(sh.header.begin(), sh.header.end());
  }
  return io::text_checksum(text);
}

ConvertReport write_plan(Plan plan, const TensorSource& source, const std::string& inputs_text,
                         const std::vector<fs::path>& srcs, const fs::path& dst,
                         const std::string& options_text, const std::string& config_text,
                         const ConvertOptions& convert) {
  OutputFolder folder(dst, srcs, convert.existing);
  if (convert.on_start) convert.on_start();
  ShardingOptions sharding;
  sharding.max_shard_bytes = convert.max_shard_bytes;
  sharding.metadata = plan.metadata;
  sharding.index_metadata = plan.index_metadata;
  const auto layout = layout_shards(plan.outputs, sharding);
  try {
    sharding.completed = folder.begin(
        layout, fingerprint(source, inputs_text, options_text, config_text, layout), config_text);
    const size_t kept =
        static_cast<size_t>(std::count(sharding.completed.begin(), sharding.completed.end(), true));
    sharding.on_shard_committed = [&](size_t s) { folder.shard_committed(layout[s]); };
    CheckpointWriter writer(folder.write_dir(), plan.outputs, sharding);
    if (kept > 0) {
      // Only the tasks that write into an unfinished shard run again.
      std::erase_if(plan.tasks, [&](const Task& t) {
        for (size_t out : task_outputs(t))
          if (!sharding.completed[writer.shard_of(out)]) return false;
        return true;
      });
    }
    WriterSink sink(writer);
    ExecOptions exec = convert.exec;
    if (convert.progress) {
      std::vector<std::string> names;
      std::vector<uint64_t> bytes;
      for (size_t s = 0; s < writer.shard_count(); ++s) {
        names.push_back(writer.shard_name(s));
        bytes.push_back(sharding.completed[s] ? 0 : writer.shard_data_bytes(s));
      }
      convert.progress->start(names, bytes);
      exec.on_write = [&](size_t out, uint64_t n) {
        const size_t s = writer.shard_of(out);
        if (!sharding.completed[s]) convert.progress->written(s, n);
      };
    }
    execute(plan, source, sink, exec);
    writer.commit();
    folder.finish();
    if (convert.progress) convert.progress->finish();
    uint64_t written = 0;
    for (size_t s = 0; s < layout.size(); ++s)
      if (!sharding.completed[s]) written += writer.shard_data_bytes(s);
    return {plan.outputs.size(), source.bytes_read(), written, writer.shard_count(), kept};
  } catch (const Interrupted&) {
    // Temporary files are gone with the writer; finished shards and the manifest stay for
    // --resume.
    throw Interrupted({ErrorKind::kInterrupted, dst.string(), "",
                       "interrupted; the shards finished so far are kept: run the same command "
                       "with --resume to continue",
                       ""});
  } catch (...) {
    folder.abandon();
    throw;
  }
}

// config.json of an HF output: quantization_config present exactly when FP8 is written.
std::string hf_config_text(const ModelConfig& config, const ToHfOptions& options) {
  nlohmann::json out_config = config.raw;
  if (effective_quant(options) == QuantMode::kNone) {
    out_config.erase("quantization_config");
    // A fused-QKV source written with split q/k/v projections: the config says so, so the
    // output reads back (and fails no layout check) as the split layout it is.
    model_spec_for(config)->rewrite_export_config(out_config, false);
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

// Tasks small enough that several fit the memory budget at once.
template <class Options>
Options within_budget(Options o, const ExecOptions& exec) {
  o.task_bytes = std::clamp<uint64_t>(exec.max_memory / 32, 64ull << 10, o.task_bytes);
  return o;
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

ConvertReport from_hf_dir(const fs::path& src, const fs::path& dst, const FromHfOptions& options,
                          const ConvertOptions& convert) {
  // Parsed from the bytes that are copied to the output, read once.
  const auto config_path = src / "config.json";
  auto config_text = io::read_small_file(config_path, 64ull << 20);
  ModelConfig config = ModelConfig::parse(
      parse_strict_json(config_text, config_path.string(), "config"), config_path.string());
  CheckpointSource source({src});
  Plan plan = plan_from_hf(source, config, within_budget(options, convert.exec));
  plan.metadata[kMetaSourceFingerprint] =
      source_fingerprint(source, *model_spec_for(config), config_text);
  const auto options_text =
      fmt::format("from-hf ep {}/{} dtype {} compat {} attn {}", options.ep_rank, options.ep_size,
                  dtype_name(options.dtype), compat_name(options.compat),
                  attn_backend_name(options.attn_backend));
  return write_plan(std::move(plan), source, describe_inputs(source), {src}, dst, options_text,
                    config_text, convert);
}

ConvertReport dequantize_dir(const fs::path& src, const fs::path& dst, const FromHfOptions& options,
                             const ConvertOptions& convert) {
  const auto config_path = src / "config.json";
  const auto config_text = io::read_small_file(config_path, 64ull << 20);
  auto config_json = parse_strict_json(config_text, config_path.string(), "config");
  ModelConfig config = ModelConfig::parse(config_json, config_path.string());
  CheckpointSource source({src});
  FromHfOptions o = within_budget(options, convert.exec);
  o.group_experts = false;
  o.ep_size = 1;
  o.ep_rank = 0;
  Plan plan = plan_from_hf(source, config, o);
  config_json.erase("quantization_config");
  const auto options_text =
      fmt::format("dequantize dtype {} compat {}", dtype_name(o.dtype), compat_name(o.compat));
  return write_plan(std::move(plan), source, describe_inputs(source), {src}, dst, options_text,
                    config_json.dump(2) + "\n", convert);
}

ConvertReport quantize_dir(const fs::path& src, const fs::path& dst, const ToHfOptions& options,
                           const ConvertOptions& convert) {
  ModelConfig config = ModelConfig::load(src / "config.json");
  CheckpointSource source({src});
  ToHfOptions o = within_budget(options, convert.exec);
  o.hf_source = true;
  if (effective_quant(o) == QuantMode::kNone)
    fail(ErrorKind::kInvalidArgument, "", "", "quantize needs a quantization mode",
         "block or cast");
  Plan plan = plan_to_hf(source, config, o, {0});
  return write_plan(std::move(plan), source, describe_inputs(source), {src}, dst,
                    "quantize " + to_hf_options_text(o, {0}), hf_config_text(config, o), convert);
}

ConvertReport to_hf_dirs(const std::vector<fs::path>& srcs, const fs::path& dst,
                         const ToHfOptions& options, const std::optional<fs::path>& config_path,
                         const ConvertOptions& convert) {
  if (srcs.empty()) fail(ErrorKind::kInvalidArgument, "", "", "no input folder");
  const fs::path cfg = config_path ? *config_path : srcs.front() / "config.json";
  ModelConfig config = ModelConfig::load(cfg);
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
        parse_strict_json(io::read_small_file(srcs[0] / "config.json", 64ull << 20),
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
      if (parse_strict_json(io::read_small_file(cp, 64ull << 20), cp.string(), "config") != config0)
        fail(ErrorKind::kConfigMismatch, cp.string(), "",
             "differs from " + (srcs[0] / "config.json").string(),
             "the same config.json in every EP rank folder");
    }
  }
  Plan plan = plan_to_hf(source, config, within_budget(options, convert.exec), starts);
  return write_plan(std::move(plan), source, describe_inputs(source), srcs, dst,
                    to_hf_options_text(options, starts), hf_config_text(config, options), convert);
}

ConvertReport to_hf_dir_from_memory(const MemorySource& native, const ModelConfig& config,
                                    const fs::path& dst, const ToHfOptions& options,
                                    int64_t expert_start, const ConvertOptions& convert) {
  return to_hf_dir_from_source(native, describe_inputs(native), config, dst, options, expert_start,
                               convert);
}

ConvertReport to_hf_dir_from_source(const TensorSource& native, const std::string& inputs_text,
                                    const ModelConfig& config, const fs::path& dst,
                                    const ToHfOptions& options, int64_t expert_start,
                                    const ConvertOptions& convert) {
  Plan plan = plan_to_hf(native, config, within_budget(options, convert.exec), {expert_start});
  return write_plan(std::move(plan), native, inputs_text, {}, dst,
                    to_hf_options_text(options, {expert_start}), hf_config_text(config, options),
                    convert);
}

}  // namespace moeckpt
