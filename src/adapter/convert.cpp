// Folder-to-folder and in-memory conversions: thin layers over plan + execute.
#include <fmt/format.h>

#include <charconv>

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
                                                     const MimoConfig& config,
                                                     const ToHfOptions& options,
                                                     int64_t expert_start) {
  MemorySource source({{fqn, dtype, shape, bytes}});
  ToHfOptions o = options;
  o.require_all_experts = false;
  auto plan = plan_to_hf(source, config, o, {expert_start});
  return run_in_memory(plan, source);
}

namespace {

void prepare_destination(const fs::path& dst, const std::vector<fs::path>& srcs) {
  std::error_code ec;
  for (const auto& s : srcs) {
    auto a = fs::weakly_canonical(s, ec), b = fs::weakly_canonical(dst, ec);
    auto [ai, bi] = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
    if (ai == a.end())
      fail(dst.string(), "", "destination is the source folder or inside it (" + s.string() + ")");
  }
  if (fs::exists(dst / kIndexFileName, ec) || fs::exists(dst / kSingleFileName, ec))
    fail(dst.string(), "", "destination already holds a checkpoint");
  fs::create_directories(dst, ec);
  if (ec) fail(dst.string(), "", "cannot create directory: " + ec.message());
}

ConvertReport write_plan(const Plan& plan, const TensorSource& source, const fs::path& dst,
                         const std::string& config_text, const ConvertOptions& convert) {
  ShardingOptions sharding;
  sharding.max_shard_bytes = convert.max_shard_bytes;
  sharding.metadata = plan.metadata;
  const fs::path config_path = dst / "config.json";
  std::error_code ec;
  const bool had_config = fs::exists(config_path, ec);
  try {
    CheckpointWriter writer(dst, plan.outputs, sharding);
    WriterSink sink(writer);
    ExecOptions exec = convert.exec;
    if (convert.progress) {
      std::vector<std::string> names;
      std::vector<uint64_t> bytes;
      for (size_t s = 0; s < writer.shard_count(); ++s) {
        names.push_back(writer.shard_name(s));
        bytes.push_back(writer.shard_data_bytes(s));
      }
      convert.progress->start(names, bytes);
      exec.on_write = [&](size_t out, uint64_t n) {
        convert.progress->written(writer.shard_of(out), n);
      };
    }
    execute(plan, source, sink, exec);
    io::write_file_atomically(config_path, config_text);
    writer.commit();
    if (convert.progress) convert.progress->finish();
    return {plan.outputs.size(), source.bytes_read(), plan.output_bytes(), writer.shard_count()};
  } catch (...) {
    if (!had_config) fs::remove(config_path, ec);
    throw;
  }
}

int64_t parse_meta_int(const std::map<std::string, std::string>& md, const char* key,
                       const std::string& where) {
  auto it = md.find(key);
  int64_t v = -1;
  if (it == md.end()) return -1;
  auto [p, e] = std::from_chars(it->second.data(), it->second.data() + it->second.size(), v);
  if (e != std::errc() || p != it->second.data() + it->second.size() || v < 0)
    fail(where, "", fmt::format("__metadata__ {} = \"{}\" is not a count", key, it->second));
  return v;
}

}  // namespace

ConvertReport from_hf_dir(const fs::path& src, const fs::path& dst, const FromHfOptions& options,
                          const ConvertOptions& convert) {
  auto config_text = io::read_small_file(src / "config.json", 64ull << 20);
  MimoConfig config = MimoConfig::load(src / "config.json");
  CheckpointSource source({src});
  Plan plan = plan_from_hf(source, config, options);
  prepare_destination(dst, {src});
  return write_plan(plan, source, dst, config_text, convert);
}

ConvertReport to_hf_dirs(const std::vector<fs::path>& srcs, const fs::path& dst,
                         const ToHfOptions& options, const std::optional<fs::path>& config_path,
                         const ConvertOptions& convert) {
  if (srcs.empty()) fail("", "", "no input folder");
  const fs::path cfg = config_path ? *config_path : srcs.front() / "config.json";
  MimoConfig config = MimoConfig::load(cfg);
  CheckpointSource source(srcs);
  std::vector<int64_t> starts;
  for (size_t p = 0; p < srcs.size(); ++p) {
    auto md = source.metadata(p);
    int64_t start = parse_meta_int(md, kMetaExpertStart, srcs[p].string());
    if (start < 0) {
      if (srcs.size() > 1)
        fail(srcs[p].string(), "", "has no moeckpt metadata, so which experts it holds is unknown",
             "the EP rank folders written by moeckpt from-hf, or one folder with all experts");
      start = 0;
    }
    starts.push_back(start);
  }
  Plan plan = plan_to_hf(source, config, options, starts);
  nlohmann::json out_config = config.raw;
  const QuantMode mode = options.compat == Compat::kAutomodel ? QuantMode::kCast : options.quant;
  if (mode == QuantMode::kNone) {
    out_config.erase("quantization_config");
  } else if (!out_config.contains("quantization_config")) {
    out_config["quantization_config"] = {{"activation_scheme", "dynamic"},
                                         {"fmt", "e4m3"},
                                         {"quant_method", "fp8"},
                                         {"weight_block_size", {128, 128}}};
  }
  prepare_destination(dst, srcs);
  return write_plan(plan, source, dst, out_config.dump(2) + "\n", convert);
}

}  // namespace moeckpt
