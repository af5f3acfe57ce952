// HF checkpoint -> destinations a model owns (moeckpt.load_hf_checkpoint): the from-hf plan,
// restricted to the rows each destination holds, written through a sink that lands bytes (or
// converted elements) in place.
#include <fmt/format.h>

#include <cstring>
#include <map>
#include <set>

#include "exec/transforms.hpp"
#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"

namespace moeckpt {
namespace {

// The dtypes the sink converts between (element_to_float reads the first, encode() writes the
// second); any other pair must be the same dtype (raw bytes).
bool converts_from(Dtype d) {
  return d == Dtype::BF16 || d == Dtype::F16 || d == Dtype::F32;
}
bool converts_to(Dtype d) {
  return converts_from(d) || d == Dtype::F64;
}

// `values` as `to`, exactly as torch's CPU copy_ converts float32 (NaN included): F32 as is, BF16
// rounded to nearest even (NaN -> 0xFFFF), F16 rounded to nearest even (NaN keeps sign and payload
// top bits), F64 widened exactly.
void encode(std::span<const float> values, Dtype to, uint8_t* dst) {
  if (to == Dtype::F64) {
    for (size_t i = 0; i < values.size(); ++i) {
      const double d = values[i];
      std::memcpy(dst + 8 * i, &d, 8);
    }
    return;
  }
  exec::encode_products(values, to, NanPolicy::kTorchCompat, dst);
}

// Bytes a destination holds: in host memory, or delivered through its stage.
uint64_t size_of(const LoadDestination& d) {
  return d.stage ? d.staged_bytes : d.bytes.size();
}

// Writes each output's bytes into its destination's rows; elements are converted when the
// destination's dtype differs (floats only, as torch's copy_ does: encode()).
class DestinationSink final : public TensorSink {
 public:
  struct Target {
    const LoadDestination* dest = nullptr;
    Dtype from{};
    uint64_t row_elems = 1;
  };
  explicit DestinationSink(std::vector<Target> targets) : targets_(std::move(targets)) {}

  void write(size_t out, uint64_t offset, std::span<const uint8_t> bytes) override {
    const Target& t = targets_.at(out);
    if (!t.dest) return;
    const uint64_t in_es = dtype_size(t.from), out_es = dtype_size(t.dest->dtype);
    const uint64_t row_bytes = t.row_elems * in_es;
    const uint64_t begin = static_cast<uint64_t>(t.dest->row0) * row_bytes;
    const uint64_t end = begin + size_of(*t.dest) / out_es * in_es;
    const uint64_t a = std::max(offset, begin), b = std::min(offset + bytes.size(), end);
    if (a >= b) return;
    const auto part = bytes.subspan(a - offset, b - a);
    const uint64_t at = (a - begin) / in_es * out_es;  // within the destination
    if (t.from == t.dest->dtype) {
      if (t.dest->stage)
        t.dest->stage(at, part);
      else
        std::memcpy(t.dest->bytes.data() + at, part.data(), part.size());
      return;
    }
    std::vector<float> values(part.size() / in_es);
    for (size_t i = 0; i < values.size(); ++i)
      values[i] = exec::element_to_float(t.from, &part[i * in_es]);
    if (!t.dest->stage) {
      encode(values, t.dest->dtype, t.dest->bytes.data() + at);
      return;
    }
    std::vector<uint8_t> converted(values.size() * out_es);
    encode(values, t.dest->dtype, converted.data());
    t.dest->stage(at, converted);
  }

 private:
  std::vector<Target> targets_;
};

}  // namespace

LoadReport load_hf_into(const std::filesystem::path& dir, const std::vector<LoadDestination>& dests,
                        const FromHfOptions& options, const ExecOptions& exec,
                        const LoadOptions& load) {
  if (!options.group_experts)
    fail(ErrorKind::kInvalidArgument, "", "", "loading into per-expert destinations",
         "grouped experts");
  const ModelConfig config = ModelConfig::load(checkpoint_config_path(dir));
  CheckpointSource source({dir});
  // No whole-checkpoint scale pre-scan: it would read every rank's scales. The checking pass
  // below reads the scales (and codes) of this rank's rows only, before anything is written.
  FromHfOptions headers_only = options;
  headers_only.prescan_scales = false;
  Plan plan = plan_from_hf(source, config, headers_only);
  std::map<std::string, size_t> by_name;
  for (size_t i = 0; i < plan.outputs.size(); ++i) by_name.emplace(plan.outputs[i].name, i);
  std::vector<DestinationSink::Target> targets(plan.outputs.size());
  std::vector<std::optional<RowWindow>> windows(plan.outputs.size());
  LoadReport report;
  std::set<std::string> seen;
  for (const auto& d : dests) {
    if (!seen.insert(d.name).second)
      fail(ErrorKind::kInvalidArgument, "", d.name, "is given twice", "one destination per tensor");
    auto it = by_name.find(d.name);
    if (it == by_name.end()) {
      report.missing.push_back(d.name);
      continue;
    }
    const TensorSpec& o = plan.outputs[it->second];
    if (d.shape != o.shape)
      fail(ErrorKind::kConfigMismatch, dir.string(), d.name,
           "the destination's shape " + format_shape(d.shape) + " differs from the checkpoint's",
           format_shape(o.shape));
    if (d.dtype != o.dtype && !(converts_from(o.dtype) && converts_to(d.dtype)))
      fail(
          ErrorKind::kInvalidArgument, "", d.name,
          fmt::format("a {} destination for a {} tensor", dtype_name(d.dtype), dtype_name(o.dtype)),
          fmt::format("a BF16, F16, F32 or F64 destination for a BF16, F16 or F32 tensor, or a {} "
                      "destination (FP8 and integer destinations are not converted into)",
                      dtype_name(o.dtype)));
    const int64_t rows = o.shape.empty() ? 1 : static_cast<int64_t>(o.shape[0]);
    const int64_t row1 = d.row1 < 0 ? rows : d.row1;
    uint64_t row_elems = 1;
    for (size_t k = 1; k < o.shape.size(); ++k) row_elems *= o.shape[k];
    const uint64_t size = size_of(d);
    if (d.row0 < 0 || d.row0 > row1 || row1 > rows ||
        size != static_cast<uint64_t>(row1 - d.row0) * row_elems * dtype_size(d.dtype))
      fail(ErrorKind::kInvalidArgument, "", d.name,
           fmt::format("rows [{}, {}) in {} bytes of {}", d.row0, row1, size, dtype_name(d.dtype)),
           fmt::format("rows within [0, {}) and {} bytes per row", rows,
                       row_elems * dtype_size(d.dtype)));
    targets[it->second] = {&d, o.dtype, row_elems};
    if (row1 > d.row0) windows[it->second] = RowWindow{d.row0, row1};
    ++report.tensors;
  }
  if (load.require_all && !report.missing.empty()) {
    std::string names;
    for (size_t i = 0; i < std::min<size_t>(5, report.missing.size()); ++i)
      names += (i ? ", " : "") + report.missing[i];
    if (report.missing.size() > 5) names += ", ...";
    fail(ErrorKind::kConfigMismatch, dir.string(), report.missing.front(),
         fmt::format("{} model tensors have no source in the checkpoint: {}", report.missing.size(),
                     names),
         "a checkpoint tensor for every destination (strict=False reports them as missing)");
  }
  for (size_t i = 0; i < plan.outputs.size(); ++i)
    if (!targets[i].dest) report.unexpected.push_back(plan.outputs[i].name);
  restrict_to_rows(plan, windows);
  // Every refusal the conversion can make, made before the first byte lands: the destinations
  // are the caller's live memory. Same plan, same rows, same budget; nothing is converted.
  uint64_t checked = 0;  // bytes the checking pass read (not counted: the report is the load's)
  if (load.phase != LoadOptions::Phase::kWriteOnly) {
    ExecOptions check = exec;
    check.check_only = true;
    check.on_write = nullptr;
    DestinationSink none(std::vector<DestinationSink::Target>{});  // no targets: never written to
    const uint64_t before = source.bytes_read();
    execute(plan, source, none, check);
    checked = source.bytes_read() - before;
    if (load.phase == LoadOptions::Phase::kCheckOnly) {
      report.bytes_read = source.bytes_read() - checked;
      return report;
    }
  }
  DestinationSink sink(std::move(targets));
  execute(plan, source, sink, exec);
  report.bytes_read = source.bytes_read() - checked;
  return report;
}

}  // namespace moeckpt
