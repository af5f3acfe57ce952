#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <unordered_map>

#include "io/file.hpp"
#include "moeckpt/block_quant.hpp"
#include "moeckpt/error.hpp"
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

// BF16-representable random weights; the magnitude changes every 32 rows (by powers of two from
// 1/8 to 8) so that blocks get distinct scales and a wrong scale row shows.
std::vector<float> random_weights(uint64_t seed, const std::string& name, int64_t rows,
                                  int64_t cols, float sigma) {
  Rng rng(name_seed(seed, name));
  std::vector<float> out(static_cast<size_t>(rows * cols));
  float factor = 1.0f;
  for (int64_t r = 0; r < rows; ++r) {
    if (r % 32 == 0) factor = std::ldexp(1.0f, static_cast<int>(rng.next() % 7) - 3);
    for (int64_t c = 0; c < cols; ++c) {
      float x = rng.uniform() * sigma * factor;
      out[static_cast<size_t>(r * cols + c)] = numerics::bf16_to_f32(numerics::f32_to_bf16_rne(x));
    }
  }
  return out;
}

std::vector<uint8_t> to_bf16_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> out(v.size() * 2);
  for (size_t i = 0; i < v.size(); ++i) {
    uint16_t b = numerics::f32_to_bf16_rne(v[i]);
    out[2 * i] = static_cast<uint8_t>(b);
    out[2 * i + 1] = static_cast<uint8_t>(b >> 8);
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
  for (int64_t m = 0; m < mtp_layers; ++m) mtp.insert(m);
  std::map<std::string, Fp8Group> shared;  // per attention prefix
  auto add = [&](const std::string& name) {
    const auto key = spec.classify(name);
    const auto shape = spec.expected_hf_shape(key);
    if (!shape)
      fail(ErrorKind::kInvalidArgument, "", name, "the config does not determine its shape");
    if (!spec.is_published_fp8(name)) {
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
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    if (!c.layer_is_moe[static_cast<size_t>(layer)]) continue;
    for (int64_t e = 0; e < c.n_routed_experts; ++e)
      for (const auto& g : spec.expert_groupings())
        for (Projection p : g.parts) add(spec.expert_weight_name("model.", layer, e, p));
  }
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
  std::vector<std::vector<float>> values, scales;
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
    numerics::accumulate_block_amax(values[mi], g.cols, kBlock, row_scale[mi]);
  }
  for (auto& s : scales) numerics::amax_to_scales(s);
  for (size_t mi = 0; mi < g.members.size(); ++mi) {
    codes[mi].resize(values[mi].size());
    numerics::quantize_block_rows(
        values[mi], g.cols, kBlock,
        std::span<const float* const>(const_cast<const float* const*>(row_scale[mi].data()),
                                      row_scale[mi].size()),
        codes[mi]);
    w.write(index.at(g.members[mi].name), 0, codes[mi]);
  }
  for (size_t mi = 0; mi < g.members.size(); ++mi)
    w.write(index.at(*spec.block_scale_name(g.members[mi].name)), 0, to_f32_bytes(scales[mi]));
}

void write_plain(const PlainTensor& p, uint64_t seed, CheckpointWriter& w,
                 const std::unordered_map<std::string, size_t>& index) {
  int64_t rows = p.shape.size() == 2 ? static_cast<int64_t>(p.shape[0]) : 1;
  int64_t cols = static_cast<int64_t>(p.shape.back());
  std::vector<float> v;
  switch (p.values) {
    case PlainTensor::Values::kWeight:
      v = random_weights(seed, p.name, rows, cols, 0.02f);
      break;
    case PlainTensor::Values::kNorm:
      v = random_weights(seed, p.name, rows, cols, 0.01f);
      for (auto& x : v) x = numerics::bf16_to_f32(numerics::f32_to_bf16_rne(1.0f + x));
      break;
    case PlainTensor::Values::kSmall:
      v = random_weights(seed, p.name, rows, cols, 0.001f);
      break;
  }
  w.write(index.at(p.name), 0, p.dtype == Dtype::F32 ? to_f32_bytes(v) : to_bf16_bytes(v));
}

int64_t default_mtp_layers(const SynthOptions& o) {
  if (o.mtp_layers) return *o.mtp_layers;
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

SynthReport synthesize_checkpoint(const fs::path& dst, const SynthOptions& o) {
  json doc = synth_config(o);
  ModelConfig config = ModelConfig::parse(doc, "synthesized config");
  const auto spec = model_spec_for(config);
  Layout layout = plan_layout(*spec, default_mtp_layers(o));
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
  std::unordered_map<std::string, size_t> index;
  for (size_t i = 0; i < specs.size(); ++i) index.emplace(specs[i].name, i);

  io::write_file_atomically(dst / "config.json", doc.dump(2) + "\n");
  CheckpointWriter writer(dst, std::move(specs), sharding);
  for (const auto& p : layout.plain) write_plain(p, o.seed, writer, index);
  for (const auto& g : layout.fp8) write_fp8_group(*spec, g, o.seed, writer, index);
  writer.commit();
  return {writer.tensor_count(), total, writer.shard_count()};
}

}  // namespace moeckpt
