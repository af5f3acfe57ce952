#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <unordered_map>

#include "io/file.hpp"
#include "moeckpt/adapter.hpp"
#include "moeckpt/block_quant.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/kernels.hpp"
#include "moeckpt/model_spec.hpp"
#include "moeckpt/numerics.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/safetensors_writer.hpp"
#include "moeckpt/scale_layout.hpp"
#include "moeckpt/synth.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint64_t name_seed(uint64_t seed, std::string_view name) {
  uint64_t h = 0xCBF29CE484222325ull ^ seed;
  for (char c : name) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001B3ull;
  return h;
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() { return splitmix64(state_); }
  float uniform() {  // in [-1, 1)
    return static_cast<float>(static_cast<int64_t>(next() >> 40) - (int64_t{1} << 23)) /
           static_cast<float>(int64_t{1} << 23);
  }

 private:
  uint64_t state_;
};

// Random BF16 weights (bit patterns); the magnitude changes every 32 rows (by powers of two from
// 1/8 to 8) so that blocks get distinct scales and a wrong scale row shows.
std::vector<uint16_t> random_weights(uint64_t seed, const std::string& name, int64_t rows,
                                     int64_t cols, float sigma) {
  Rng rng(name_seed(seed, name));
  std::vector<uint16_t> out(static_cast<size_t>(rows * cols));
  float factor = 1.0f;
  for (int64_t r = 0; r < rows; ++r) {
    if (r % 32 == 0) factor = std::ldexp(1.0f, static_cast<int>(rng.next() % 7) - 3);
    for (int64_t c = 0; c < cols; ++c)
      out[static_cast<size_t>(r * cols + c)] =
          numerics::f32_to_bf16_rne(rng.uniform() * sigma * factor);
  }
  return out;
}

std::vector<uint8_t> to_bf16_bytes(const std::vector<uint16_t>& v) {
  std::vector<uint8_t> out(v.size() * 2);
  for (size_t i = 0; i < v.size(); ++i) {
    out[2 * i] = static_cast<uint8_t>(v[i]);
    out[2 * i + 1] = static_cast<uint8_t>(v[i] >> 8);
  }
  return out;
}

std::vector<uint8_t> to_f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> out(v.size() * 4);
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

// One projection of an FP8 group: its weights and scale grid shape.
struct Fp8Member {
  std::string name;
  Projection projection;
  int64_t rows;
  int64_t scale_rows;
};

// A set of FP8 weights quantized together: one member for an ordinary weight (plain grid), or
// q/k/v through the fused per-shard row space.
struct Fp8Group {
  std::vector<Fp8Member> members;
  int64_t cols = 0;
  std::optional<FusedQkvLayout> fused;
};

struct PlainTensor {
  std::string name;
  Dtype dtype;
  std::vector<uint64_t> shape;
  enum class Values { kWeight, kNorm, kSmall } values;
};

struct Layout {
  std::vector<PlainTensor> plain;
  std::vector<Fp8Group> fp8;
  std::vector<TensorSpec> specs;  // in file order
};

constexpr int64_t kBlock = 128;

void add_fp8(Layout& l, const std::string& name, int64_t rows, int64_t cols) {
  Fp8Group g;
  g.cols = cols;
  g.members.push_back({name, Projection::kNone, rows, plain_scale_count(rows, kBlock)});
  l.fp8.push_back(std::move(g));
}

void add_plain(Layout& l, std::string name, Dtype dt, std::vector<uint64_t> shape,
               PlainTensor::Values v) {
  l.plain.push_back({std::move(name), dt, std::move(shape), v});
}

// Every tensor of the HF checkpoint the spec describes: what it requires of a whole checkpoint
// (with `mtp_layers` MTP layers) plus each MoE layer's routed experts. Published-FP8 weights are
// quantized, q/k/v through the shared-scale layout where the spec writes one; the rest are BF16
// (F32 where the family publishes it so).
Layout plan_layout(const ModelSpec& spec, int64_t mtp_layers) {
  const ModelConfig& c = spec.config();
  Layout l;
  using V = PlainTensor::Values;
  std::set<int64_t> mtp;
  for (int64_t m = 0; m < mtp_layers; ++m) mtp.insert(spec.mtp_layer_id(m));
  std::map<std::string, Fp8Group> shared;  // per attention prefix
  auto add = [&](const std::string& name) {
    const auto key = spec.classify(name);
    const auto shape = spec.expected_hf_shape(key);
    if (!shape)
      fail(ErrorKind::kInvalidArgument, "", name, "the config does not determine its shape");
    if (!spec.publishes_fp8() || !spec.is_published_fp8(name)) {
      const V v = key.kind == TensorKind::kNorm || key.kind == TensorKind::kFinalNorm ? V::kNorm
                  : shape->size() == 1 && key.kind != TensorKind::kNorm               ? V::kSmall
                                                                                      : V::kWeight;
      add_plain(l, name, spec.is_published_f32(key) ? Dtype::F32 : Dtype::BF16, *shape, v);
      return;
    }
    const auto rows = static_cast<int64_t>((*shape)[0]), cols = static_cast<int64_t>((*shape)[1]);
    if (auto fused = spec.shared_qkv_scales_to_write(key, kBlock)) {
      auto& g = shared[spec.attention_prefix(name)];
      g.cols = cols;
      g.fused = fused;
      g.members.push_back({name, key.projection, rows, fused->scale_rows(key.projection)});
      return;
    }
    add_fp8(l, name, rows, cols);
  };
  for (const auto& r : spec.required_tensors("model.", mtp, false)) add(r.name);
  std::vector<int64_t> expert_layers;
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer)
    if (c.layer_is_moe[static_cast<size_t>(layer)]) expert_layers.push_back(layer);
  if (spec.mtp_layers_have_routed_experts())
    for (int64_t m : mtp) expert_layers.push_back(m);
  for (int64_t layer : expert_layers)
    for (int64_t e = 0; e < c.n_routed_experts; ++e)
      for (const auto& g : spec.expert_groupings())
        for (Projection p : g.parts) add(spec.expert_weight_name("model.", layer, e, p));
  for (auto& [_, g] : shared) l.fp8.push_back(std::move(g));
  return l;
}

// File order: by name's position in the plan, weights before their scales; scales of odd-numbered
// experts go last, so some scales live in a different shard than their weights (as can happen in
// real checkpoints).
std::vector<TensorSpec> file_order(const ModelSpec& spec, const Layout& l) {
  std::vector<TensorSpec> specs, late;
  struct Item {
    std::string sort_key;
    TensorSpec spec;
    bool late;
  };
  std::vector<Item> items;
  auto key = [&spec](const std::string& name) {
    auto k = spec.classify(name);
    char buf[64];
    std::snprintf(buf, sizeof buf, "%d%08lld%08lld", k.mtp ? 2 : (k.layer ? 1 : 0),
                  static_cast<long long>(k.layer.value_or(0)),
                  static_cast<long long>(k.expert.value_or(-1) + 1));
    return std::string(buf) + k.weight_name + (k.is_scale ? "~" : "");
  };
  for (const auto& p : l.plain) items.push_back({key(p.name), {p.name, p.dtype, p.shape}, false});
  for (const auto& g : l.fp8)
    for (const auto& m : g.members) {
      const auto rows = static_cast<uint64_t>(m.rows);
      const auto cols = static_cast<uint64_t>(g.cols);
      items.push_back({key(m.name), {m.name, Dtype::F8_E4M3, {rows, cols}}, false});
      auto sname = *spec.block_scale_name(m.name);
      auto sk = spec.classify(sname);
      items.push_back({key(sname),
                       {sname,
                        Dtype::F32,
                        {static_cast<uint64_t>(m.scale_rows),
                         static_cast<uint64_t>(plain_scale_count(g.cols, kBlock))}},
                       sk.expert && *sk.expert % 2 == 1});
    }
  std::stable_sort(items.begin(), items.end(),
                   [](const Item& a, const Item& b) { return a.sort_key < b.sort_key; });
  for (auto& it : items) (it.late ? late : specs).push_back(std::move(it.spec));
  for (auto& s : late) specs.push_back(std::move(s));
  return specs;
}

void write_fp8_group(const ModelSpec& spec, const Fp8Group& g, uint64_t seed, CheckpointWriter& w,
                     const std::unordered_map<std::string, size_t>& index) {
  const int64_t cb = plain_scale_count(g.cols, kBlock);
  std::vector<std::vector<uint16_t>> values;
  std::vector<std::vector<float>> scales;
  for (const auto& m : g.members) {
    values.push_back(random_weights(seed, m.name, m.rows, g.cols, 0.02f));
    scales.emplace_back(static_cast<size_t>(m.scale_rows * cb), 0.0f);
  }
  auto member_of = [&](Projection p) -> size_t {
    for (size_t i = 0; i < g.members.size(); ++i)
      if (g.members[i].projection == p) return i;
    return 0;
  };
  auto source = [&](size_t mi, int64_t row) -> std::pair<size_t, int64_t> {
    if (!g.fused) return {mi, row / kBlock};
    auto s = g.fused->scale_source(g.members[mi].projection, row);
    return {member_of(s.owner), s.scale_row};
  };
  // Blocks may span projections in the fused layout: one routine over all members.
  std::vector<std::vector<float*>> row_scale(g.members.size());
  std::vector<std::vector<uint8_t>> codes(g.members.size());
  for (size_t mi = 0; mi < g.members.size(); ++mi) {
    for (int64_t r = 0; r < g.members[mi].rows; ++r) {
      auto [owner, srow] = source(mi, r);
      row_scale[mi].push_back(&scales[owner][static_cast<size_t>(srow * cb)]);
    }
    // The dispatched kernels, bit-exact with numerics::accumulate_block_amax and
    // quantize_block_rows (tests/numerics), a row at a time for the row -> scale row map.
    for (int64_t r = 0; r < g.members[mi].rows; ++r)
      kernels::block_amax_bf16(&values[mi][static_cast<size_t>(r * g.cols)], 1, g.cols, g.cols,
                               false, 1, kBlock, row_scale[mi][static_cast<size_t>(r)], cb);
  }
  for (auto& s : scales) numerics::amax_to_scales(s);
  for (size_t mi = 0; mi < g.members.size(); ++mi) {
    codes[mi].resize(values[mi].size());
    kernels::QuantArgs q;
    q.src = values[mi].data();
    q.rows = g.members[mi].rows;
    q.cols = q.src_ld = q.dst_ld = g.cols;
    q.dst = codes[mi].data();
    q.mode = kernels::QuantArgs::kSaturating;
    q.row_scale = row_scale[mi].data();
    q.block_cols = kBlock;
    kernels::quant_bf16_to_fp8(q);
    w.write(index.at(g.members[mi].name), 0, codes[mi]);
  }
  for (size_t mi = 0; mi < g.members.size(); ++mi)
    w.write(index.at(*spec.block_scale_name(g.members[mi].name)), 0, to_f32_bytes(scales[mi]));
}

// Sparse checkpoints: plain tensors above this size are holes.
constexpr uint64_t kSparseRealBytes = 4ull << 20;

// The codes of a sparse checkpoint are holes (zeros); its scales are real: positive powers of two
// times a random mantissa around what a 0.02-sigma weight block gets (amax / 448).
void write_sparse_fp8_group(const ModelSpec& spec, const Fp8Group& g, uint64_t seed,
                            CheckpointWriter& w,
                            const std::unordered_map<std::string, size_t>& index) {
  const int64_t cb = plain_scale_count(g.cols, kBlock);
  for (const auto& m : g.members) {
    w.leave_hole(index.at(m.name));
    const auto scale_name = *spec.block_scale_name(m.name);
    uint64_t state = name_seed(seed, scale_name);
    std::vector<float> scales(static_cast<size_t>(m.scale_rows * cb));
    for (auto& s : scales)
      s = std::ldexp(1.0f + static_cast<float>(splitmix64(state) >> 41) / float(1 << 23),
                     -13 - static_cast<int>(splitmix64(state) % 3));
    w.write(index.at(scale_name), 0, to_f32_bytes(scales));
  }
}

void write_plain(const PlainTensor& p, uint64_t seed, CheckpointWriter& w,
                 const std::unordered_map<std::string, size_t>& index) {
  int64_t rows = p.shape.size() == 2 ? static_cast<int64_t>(p.shape[0]) : 1;
  int64_t cols = static_cast<int64_t>(p.shape.back());
  std::vector<uint16_t> v;
  switch (p.values) {
    case PlainTensor::Values::kWeight:
      v = random_weights(seed, p.name, rows, cols, 0.02f);
      break;
    case PlainTensor::Values::kNorm:
      v = random_weights(seed, p.name, rows, cols, 0.01f);
      for (auto& x : v) x = numerics::f32_to_bf16_rne(1.0f + numerics::bf16_to_f32(x));
      break;
    case PlainTensor::Values::kSmall:
      v = random_weights(seed, p.name, rows, cols, 0.001f);
      break;
  }
  if (p.dtype == Dtype::F32) {
    std::vector<float> f(v.size());
    std::transform(v.begin(), v.end(), f.begin(), numerics::bf16_to_f32);
    w.write(index.at(p.name), 0, to_f32_bytes(f));
  } else {
    w.write(index.at(p.name), 0, to_bf16_bytes(v));
  }
}

int64_t default_mtp_layers(const SynthOptions& o, const ModelSpec& spec) {
  const auto declared = spec.configured_mtp_layers();  // the config's own count, if it has one
  if (o.mtp_layers) {
    if (declared && *o.mtp_layers > *declared)
      fail(ErrorKind::kInvalidArgument, "", "",
           fmt::format("mtp = {} MTP layers for a {} config that declares {}", *o.mtp_layers,
                       spec.layout_name(), *declared),
           fmt::format("0..{}", *declared));
    return *o.mtp_layers;
  }
  if (declared) return *declared;
  if (o.preset == "micro") return 0;
  // A trimmed full-size model keeps one MTP layer (each is ~0.3 GB at real size).
  return o.preset == "full" && o.layers && *o.layers < 48 ? 1 : 3;
}

}  // namespace

json synth_config(const SynthOptions& o) {
  if (o.mtp_layers && (*o.mtp_layers < 0 || *o.mtp_layers > 16))
    fail(ErrorKind::kInvalidArgument, "", "",
         "mtp = " + std::to_string(*o.mtp_layers) + " is out of range", "0..16");
  return model_preset(o.preset, {o.layers, o.experts, o.vocab});
}

// A native (training-layout) checkpoint of a spec's model whose values are computed when read,
// element by element from (seed, name, index): nothing is held in memory, whatever the size.
// Weights are BF16-representable with a magnitude that changes every 32 rows (so blocks get
// distinct scales); norms are near 1, 1-D tensors small.
class SyntheticNativeSource final : public TensorSource {
 public:
  SyntheticNativeSource(const ModelSpec& spec, int64_t mtp_layers, int64_t tp, uint64_t seed)
      : seed_(seed) {
    const ModelConfig& c = spec.config();
    std::set<int64_t> mtp;
    for (int64_t m = 0; m < mtp_layers; ++m) mtp.insert(spec.mtp_layer_id(m));
    for (const auto& r : spec.required_tensors("model.", mtp, true)) {
      const auto key = spec.classify(r.name);
      std::vector<uint64_t> shape;
      if (key.kind == TensorKind::kGroupedExperts) {
        const auto [in, width] = spec.grouped_slot_shape(spec.expert_grouping(key.projection));
        shape = {static_cast<uint64_t>(c.n_routed_experts), in, width};
      } else if (key.kind == TensorKind::kExpertBias) {  // [E, the projection's rows]
        shape = {static_cast<uint64_t>(c.n_routed_experts),
                 spec.expert_hf_shape(key.projection)[0]};
      } else if (key.projection == Projection::kQkv) {  // fused natively: canonical [Q, K, V]
        const auto l = spec.qkv_interleave(spec.attention_dims(key), tp, true, "", r.name);
        shape = {static_cast<uint64_t>(l.rows()), static_cast<uint64_t>(c.hidden_size)};
      } else {
        shape = spec.expected_hf_shape(key).value();
      }
      add(r.name, spec.is_published_f32(key) ? Dtype::F32 : Dtype::BF16, std::move(shape),
          key.kind == TensorKind::kNorm || key.kind == TensorKind::kFinalNorm);
    }
    for (const auto& [name, shape] : spec.synthetic_passthrough_tensors())
      add(name, Dtype::BF16, shape, false);
    std::stable_sort(tensors_.begin(), tensors_.end(),
                     [](const SourceTensor& a, const SourceTensor& b) { return a.name < b.name; });
    index();
    metadata_ = {{"format", "pt"},        {kMetaLayout, "native"},
                 {kMetaEpSize, "1"},      {kMetaEpRank, "0"},
                 {kMetaExpertStart, "0"}, {kMetaExpertCount, std::to_string(c.n_routed_experts)}};
  }

  void read(const SourceTensor& t, uint64_t offset, std::span<uint8_t> out) const override {
    const uint64_t es = dtype_size(t.dtype);
    const uint64_t cols = t.shape.back();
    const uint64_t h = name_seed(seed_, t.name);
    const bool norm = norms_.contains(t.name);
    const float sigma = norm ? 0.01f : t.shape.size() == 1 ? 0.001f : 0.02f;
    for (uint64_t b = 0; b < out.size(); b += es) {
      const uint64_t i = (offset + b) / es;
      const uint64_t row = i / cols;
      uint64_t rs = h ^ (row / 32 * 0x9E3779B97F4A7C15ull),
               es_state = h + i * 0xD1B54A32D192ED03ull;
      const float factor =
          t.shape.size() == 1 ? 1.0f : std::ldexp(1.0f, static_cast<int>(splitmix64(rs) % 7) - 3);
      const float u = static_cast<float>(static_cast<int64_t>(splitmix64(es_state) >> 40) -
                                         (int64_t{1} << 23)) /
                      static_cast<float>(int64_t{1} << 23);
      float x = u * sigma * factor + (norm ? 1.0f : 0.0f);
      const uint16_t bf = numerics::f32_to_bf16_rne(x);
      x = numerics::bf16_to_f32(bf);
      if (es == 2) {
        out[b] = static_cast<uint8_t>(bf);
        out[b + 1] = static_cast<uint8_t>(bf >> 8);
      } else {
        std::memcpy(&out[b], &x, 4);
      }
    }
    bytes_read_ += out.size();
  }
  std::map<std::string, std::string> metadata(size_t) const override { return metadata_; }
  size_t parts() const override { return 1; }
  uint64_t total_bytes() const {
    uint64_t n = 0;
    for (const auto& t : tensors_) n += t.nbytes;
    return n;
  }

 private:
  void add(const std::string& name, Dtype dt, std::vector<uint64_t> shape, bool norm) {
    uint64_t n = dtype_size(dt);
    for (auto d : shape) n *= d;
    tensors_.push_back({name, dt, std::move(shape), "<synthetic>", 0, n});
    if (norm) norms_.insert(name);
  }

  uint64_t seed_;
  std::set<std::string> norms_;
  std::map<std::string, std::string> metadata_;
};

// A fused-QKV or stacked-MXFP4 layout is synthesized as it is published: a native checkpoint,
// generated, written by the exporter (fused qkv_proj over the TP degree with a grid per shard,
// MXFP4 experts where the family has them, the index's tp_size) — the same code path as a real
// export.
SynthReport synthesize_by_export(const fs::path& dst, const json& doc, const ModelSpec& spec,
                                 const SynthOptions& o) {
  const int64_t tp = spec.fixed_checkpoint_tp().value_or(o.tp_size.value_or(4));
  SyntheticNativeSource native(spec, default_mtp_layers(o, spec), tp, o.seed);
  ToHfOptions th;
  th.quant = QuantMode::kBlock;
  th.tp_size = tp;
  ConvertOptions convert;
  convert.max_shard_bytes = o.max_shard_bytes.value_or(
      std::min<uint64_t>(convert.max_shard_bytes, std::max<uint64_t>(1, native.total_bytes() / 3)));
  const auto inputs = fmt::format("synthetic {} seed {} mtp {} tp {}", spec.layout_name(), o.seed,
                                  default_mtp_layers(o, spec), tp);
  auto r = to_hf_dir_from_source(native, inputs, ModelConfig::parse(doc, "synthesized config"), dst,
                                 th, 0, convert);
  return {r.tensors, r.bytes_out, r.shards};
}

namespace {

// The presets whose fused qkv_proj is interleaved over a TP degree the options may choose.
std::vector<std::string> presets_taking_a_tp_degree() {
  std::vector<std::string> out;
  for (const auto& name : model_preset_names()) {
    const auto spec = model_spec_for(ModelConfig::parse(model_preset(name), "preset " + name));
    if (spec->hf_qkv_fused() && !spec->fixed_checkpoint_tp()) out.push_back(name);
  }
  return out;
}

// The refusals of options alone (no file is looked at), shared by synthesize_checkpoint and
// check_synth_options.
void check_options(const SynthOptions& o, const ModelSpec& spec) {
  if (o.tp_size) {
    if (*o.tp_size < 1)
      fail(ErrorKind::kInvalidArgument, "", "", fmt::format("a TP degree of {}", *o.tp_size),
           "a TP degree of at least 1");
    const auto fixed = spec.fixed_checkpoint_tp();
    if (!spec.hf_qkv_fused() || fixed)
      fail(ErrorKind::kInvalidArgument, "", "",
           fmt::format("a TP degree ({}) for the {} layout, {}", *o.tp_size, spec.layout_name(),
                       fixed ? fmt::format("whose fused qkv_proj is interleaved over the TP "
                                           "degree its config fixes ({})",
                                           *fixed)
                             : "whose attention projections are not interleaved over TP shards"),
           fmt::format("no TP degree for this preset; only a preset with a fused qkv_proj over a "
                       "chosen TP degree takes one ({})",
                       fmt::join(presets_taking_a_tp_degree(), ", ")));
  }
  if ((spec.hf_qkv_fused() || spec.hf_experts_stacked()) && o.sparse)
    fail(ErrorKind::kInvalidArgument, "", "",
         fmt::format("sparse files of the {} layout (synthesized by export)", spec.layout_name()),
         "a preset of a layout synthesized directly");
  default_mtp_layers(o, spec);  // refuses more MTP layers than the config declares
}

}  // namespace

void check_synth_options(const SynthOptions& o) {
  const json doc = synth_config(o);
  check_options(o, *model_spec_for(ModelConfig::parse(doc, "synthesized config")));
}

SynthReport synthesize_checkpoint(const fs::path& dst, const SynthOptions& o) {
  json doc = synth_config(o);
  ModelConfig config = ModelConfig::parse(doc, "synthesized config");
  const auto spec = model_spec_for(config);
  check_options(o, *spec);
  if (spec->hf_qkv_fused() || spec->hf_experts_stacked()) {
    std::error_code ec;
    if (fs::exists(dst / kIndexFileName, ec) || fs::exists(dst / kSingleFileName, ec))
      fail(ErrorKind::kDestination, dst.string(), "", "destination already holds a checkpoint");
    return synthesize_by_export(dst, doc, *spec, o);
  }
  Layout layout = plan_layout(*spec, default_mtp_layers(o, *spec));
  auto specs = file_order(*spec, layout);

  std::error_code ec;
  if (fs::exists(dst / kIndexFileName, ec) || fs::exists(dst / kSingleFileName, ec))
    fail(ErrorKind::kDestination, dst.string(), "", "destination already holds a checkpoint");
  // A zero shard size would write config.json and no shard: refused before anything exists.
  if (o.max_shard_bytes && *o.max_shard_bytes == 0)
    fail(ErrorKind::kDestination, dst.string(), "", "shard size 0",
         "a maximum shard size of at least 1 byte");
  fs::create_directories(dst, ec);
  if (ec)
    fail(ErrorKind::kDestination, dst.string(), "", "cannot create directory: " + ec.message());

  uint64_t total = 0;
  for (const auto& s : specs) total += s.nbytes();
  ShardingOptions sharding;
  sharding.max_shard_bytes = o.max_shard_bytes.value_or(
      std::min<uint64_t>(sharding.max_shard_bytes, std::max<uint64_t>(1, (total + 2) / 3)));
  sharding.metadata = {{"format", "pt"}};
  sharding.sparse = o.sparse;
  std::unordered_map<std::string, size_t> index;
  for (size_t i = 0; i < specs.size(); ++i) index.emplace(specs[i].name, i);

  io::write_file_atomically(dst / "config.json", doc.dump(2) + "\n");
  CheckpointWriter writer(dst, std::move(specs), sharding);
  if (o.sparse) {
    for (const auto& p : layout.plain) {
      const size_t i = index.at(p.name);
      if (writer.spec(i).nbytes() > kSparseRealBytes)
        writer.leave_hole(i);
      else
        write_plain(p, o.seed, writer, index);
    }
    for (const auto& g : layout.fp8) write_sparse_fp8_group(*spec, g, o.seed, writer, index);
  } else {
    for (const auto& p : layout.plain) write_plain(p, o.seed, writer, index);
    for (const auto& g : layout.fp8) write_fp8_group(*spec, g, o.seed, writer, index);
  }
  writer.commit();
  return {writer.tensor_count(), total, writer.shard_count()};
}

}  // namespace moeckpt
