#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <unordered_map>

#include "io/file.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/mimo_config.hpp"
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

void add_attention(Layout& l, const std::string& p, const AttentionDims& a, int64_t hidden) {
  Fp8Group g;
  g.cols = hidden;
  g.fused = FusedQkvLayout::make(a.q_rows(), a.k_rows(), a.v_rows(), kBlock);
  if (!g.fused)
    fail(ErrorKind::kConfigMismatch, "", p + "self_attn",
         "q/k/v rows do not split over the published tensor parallelism (4)");
  // Projections too small to own a scale row in the fused layout (the micro preset's) are
  // quantized on the plain grid.
  if (!g.fused->every_projection_owns_scale_rows()) {
    for (Projection pr : kQkv) {
      const int64_t rows = pr == Projection::kQ   ? a.q_rows()
                           : pr == Projection::kK ? a.k_rows()
                                                  : a.v_rows();
      add_fp8(l, p + "self_attn." + std::string(projection_name(pr)) + ".weight", rows, hidden);
    }
  } else {
    for (Projection pr : kQkv)
      g.members.push_back({p + "self_attn." + std::string(projection_name(pr)) + ".weight", pr,
                           g.fused->rows(pr), g.fused->scale_rows(pr)});
    l.fp8.push_back(std::move(g));
  }
  add_plain(l, p + "self_attn.o_proj.weight", Dtype::BF16,
            {static_cast<uint64_t>(hidden), static_cast<uint64_t>(a.o_cols())},
            PlainTensor::Values::kWeight);
  if (a.has_sink)
    add_plain(l, p + "self_attn.attention_sink_bias", Dtype::BF16,
              {static_cast<uint64_t>(a.num_heads)}, PlainTensor::Values::kSmall);
}

void add_dense_mlp(Layout& l, const std::string& p, int64_t hidden, int64_t inter) {
  add_fp8(l, p + "mlp.gate_proj.weight", inter, hidden);
  add_fp8(l, p + "mlp.up_proj.weight", inter, hidden);
  add_fp8(l, p + "mlp.down_proj.weight", hidden, inter);
}

Layout plan_layout(const MimoConfig& c, int64_t mtp_layers) {
  Layout l;
  const auto D = static_cast<uint64_t>(c.hidden_size);
  using V = PlainTensor::Values;
  add_plain(l, "model.embed_tokens.weight", Dtype::BF16, {static_cast<uint64_t>(c.vocab_size), D},
            V::kWeight);
  auto layer = [&](const std::string& p, const AttentionDims& a, bool moe, bool mtp) {
    if (mtp) {
      for (auto n : {"enorm.weight", "hnorm.weight"})
        add_plain(l, p + n, Dtype::BF16, {D}, V::kNorm);
      add_plain(l, p + "eh_proj.weight", Dtype::BF16, {D, 2 * D}, V::kWeight);
    }
    add_plain(l, p + "input_layernorm.weight", Dtype::BF16, {D}, V::kNorm);
    add_attention(l, p, a, c.hidden_size);
    add_plain(l, p + (mtp ? "pre_mlp_layernorm.weight" : "post_attention_layernorm.weight"),
              Dtype::BF16, {D}, V::kNorm);
    if (!moe) {
      add_dense_mlp(l, p, c.hidden_size, c.intermediate_size);
    } else {
      const auto E = static_cast<uint64_t>(c.n_routed_experts);
      add_plain(l, p + "mlp.gate.weight", Dtype::F32, {E, D}, V::kWeight);
      add_plain(l, p + "mlp.gate.e_score_correction_bias", Dtype::F32, {E}, V::kSmall);
      for (int64_t e = 0; e < c.n_routed_experts; ++e) {
        auto ep = p + "mlp.experts." + std::to_string(e) + ".";
        add_fp8(l, ep + "gate_proj.weight", c.moe_intermediate_size, c.hidden_size);
        add_fp8(l, ep + "up_proj.weight", c.moe_intermediate_size, c.hidden_size);
        add_fp8(l, ep + "down_proj.weight", c.hidden_size, c.moe_intermediate_size);
      }
    }
    if (mtp) add_plain(l, p + "final_layernorm.weight", Dtype::BF16, {D}, V::kNorm);
  };
  for (int64_t i = 0; i < c.num_hidden_layers; ++i)
    layer("model.layers." + std::to_string(i) + ".", c.layer_attention_dims(i),
          c.layer_is_moe[static_cast<size_t>(i)], false);
  for (int64_t m = 0; m < mtp_layers; ++m)
    layer("model.mtp.layers." + std::to_string(m) + ".", c.swa, false, true);
  add_plain(l, "model.norm.weight", Dtype::BF16, {D}, V::kNorm);
  add_plain(l, "lm_head.weight", Dtype::BF16, {static_cast<uint64_t>(c.vocab_size), D}, V::kWeight);
  return l;
}

// File order: by name's position in the plan, weights before their scales; scales of odd-numbered
// experts go last, so some scales live in a different shard than their weights (as can happen in
// real checkpoints).
std::vector<TensorSpec> file_order(const Layout& l) {
  std::vector<TensorSpec> specs, late;
  struct Item {
    std::string sort_key;
    TensorSpec spec;
    bool late;
  };
  std::vector<Item> items;
  auto key = [](const std::string& name) {
    auto k = classify_tensor_name(name);
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
      auto sname = m.name + "_scale_inv";
      auto sk = classify_tensor_name(sname);
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

void write_fp8_group(const Fp8Group& g, uint64_t seed, CheckpointWriter& w,
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
  // Pass 1: amax per block (blocks may span projections in the fused layout).
  for (size_t mi = 0; mi < g.members.size(); ++mi)
    for (int64_t r = 0; r < g.members[mi].rows; ++r) {
      auto [owner, srow] = source(mi, r);
      float* amax = &scales[owner][static_cast<size_t>(srow * cb)];
      const float* row = &values[mi][static_cast<size_t>(r * g.cols)];
      for (int64_t c = 0; c < g.cols; ++c)
        amax[c / kBlock] = std::max(amax[c / kBlock], std::fabs(row[c]));
    }
  for (auto& s : scales)
    for (auto& x : s) x = numerics::block_scale_from_amax(x);
  // Pass 2: quantize with the block's scale.
  for (size_t mi = 0; mi < g.members.size(); ++mi) {
    std::vector<uint8_t> codes(values[mi].size());
    for (int64_t r = 0; r < g.members[mi].rows; ++r) {
      auto [owner, srow] = source(mi, r);
      const float* scale = &scales[owner][static_cast<size_t>(srow * cb)];
      for (int64_t c = 0; c < g.cols; ++c) {
        auto i = static_cast<size_t>(r * g.cols + c);
        codes[i] = numerics::f32_to_fp8_e4m3fn_saturating(values[mi][i] / scale[c / kBlock]);
      }
    }
    w.write(index.at(g.members[mi].name), 0, codes);
  }
  for (size_t mi = 0; mi < g.members.size(); ++mi)
    w.write(index.at(g.members[mi].name + "_scale_inv"), 0, to_f32_bytes(scales[mi]));
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

// What every preset shares: the architecture's fixed choices (attention sinks, rope, routing).
json preset_config(const char* dimensions) {
  json c = json::parse(R"({
    "architectures": ["MiMoV2FlashForCausalLM"], "model_type": "mimo_v2_flash",
    "sliding_window": 128, "sliding_window_size": 128,
    "add_swa_attention_sink_bias": true, "add_full_attention_sink_bias": false,
    "attention_value_scale": 0.707, "attention_bias": false, "partial_rotary_factor": 0.334,
    "rope_theta": 5000000, "swa_rope_theta": 10000, "layernorm_epsilon": 1e-5,
    "hidden_act": "silu", "n_shared_experts": null, "scoring_func": "sigmoid",
    "topk_method": "noaux_tc", "n_group": 1, "topk_group": 1, "norm_topk_prob": true,
    "routed_scaling_factor": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16"})");
  c.update(json::parse(dimensions));
  return c;
}

json full_config() {
  json c = preset_config(R"({
    "vocab_size": 152576, "hidden_size": 4096, "intermediate_size": 16384,
    "moe_intermediate_size": 2048, "num_hidden_layers": 48,
    "num_attention_heads": 64, "num_key_value_heads": 4, "head_dim": 192, "v_head_dim": 128,
    "swa_num_attention_heads": 64, "swa_num_key_value_heads": 8, "swa_head_dim": 192,
    "swa_v_head_dim": 128, "max_position_embeddings": 262144, "n_routed_experts": 256,
    "num_experts_per_tok": 8})");
  std::vector<int> pattern(48, 1);
  for (int l : {0, 5, 11, 17, 23, 29, 35, 41, 47}) pattern[static_cast<size_t>(l)] = 0;
  std::vector<int> moe(48, 1);
  moe[0] = 0;
  c["hybrid_layer_pattern"] = pattern;
  c["moe_layer_freq"] = moe;
  return c;
}

json tiny_config() {
  return preset_config(R"({
    "vocab_size": 512, "hidden_size": 256, "intermediate_size": 512, "moe_intermediate_size": 128,
    "num_hidden_layers": 4, "hybrid_layer_pattern": [0, 1, 1, 0], "moe_layer_freq": [0, 1, 1, 1],
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 192, "v_head_dim": 128,
    "swa_num_attention_heads": 8, "swa_num_key_value_heads": 8, "swa_head_dim": 192,
    "swa_v_head_dim": 128, "max_position_embeddings": 4096, "n_routed_experts": 8,
    "num_experts_per_tok": 2})");
}

// The smallest checkpoint with the structural features a malformed-input corpus needs (~120 KB):
// a dense full-attention layer and a sliding-window MoE layer with sinks, dimensions over 128
// (several scale blocks, ragged last blocks), 4 experts, no MTP layer.
json micro_config() {
  return preset_config(R"({
    "vocab_size": 32, "hidden_size": 136, "intermediate_size": 40, "moe_intermediate_size": 24,
    "num_hidden_layers": 2, "hybrid_layer_pattern": [0, 1], "moe_layer_freq": [0, 1],
    "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32, "v_head_dim": 16,
    "swa_num_attention_heads": 2, "swa_num_key_value_heads": 2, "swa_head_dim": 32,
    "swa_v_head_dim": 16, "max_position_embeddings": 4096, "n_routed_experts": 4,
    "num_experts_per_tok": 2})");
}

int64_t default_mtp_layers(const SynthOptions& o) {
  if (o.mtp_layers) return *o.mtp_layers;
  if (o.preset == "micro") return 0;
  // A trimmed full-size model keeps one MTP layer (each is ~0.3 GB at real size).
  return o.preset == "full" && o.layers && *o.layers < 48 ? 1 : 3;
}

}  // namespace

json synth_config(const SynthOptions& o) {
  json c;
  if (o.preset == "tiny")
    c = tiny_config();
  else if (o.preset == "full")
    c = full_config();
  else if (o.preset == "micro")
    c = micro_config();
  else
    fail(ErrorKind::kInvalidArgument, "", "", "unknown preset \"" + o.preset + "\"",
         "tiny, micro or full");
  auto check = [](const char* what, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi)
      fail(ErrorKind::kInvalidArgument, "", "",
           std::string(what) + " = " + std::to_string(v) + " is out of range",
           std::to_string(lo) + ".." + std::to_string(hi));
  };
  if (o.layers) {
    const int64_t n = c["num_hidden_layers"].get<int64_t>();
    check("layers", *o.layers, 1, n);
    auto trim = [&](const char* key) {
      auto v = c[key].get<std::vector<int>>();
      v.resize(static_cast<size_t>(*o.layers));
      c[key] = v;
    };
    trim("hybrid_layer_pattern");
    trim("moe_layer_freq");
    c["num_hidden_layers"] = *o.layers;
  }
  if (o.experts) {
    check("experts", *o.experts, 1, 4096);
    c["n_routed_experts"] = *o.experts;
    c["num_experts_per_tok"] =
        std::min<int64_t>(c["num_experts_per_tok"].get<int64_t>(), *o.experts);
  }
  if (o.vocab) {
    check("vocab", *o.vocab, 1, int64_t{1} << 22);
    c["vocab_size"] = *o.vocab;
  }
  if (o.mtp_layers) check("mtp", *o.mtp_layers, 0, 16);
  json ignored = json::array();
  for (int64_t i = 0; i < c["num_hidden_layers"].get<int64_t>(); ++i)
    ignored.push_back("model.layers." + std::to_string(i) + ".self_attn.o_proj");
  c["quantization_config"] = {{"activation_scheme", "dynamic"},
                              {"fmt", "e4m3"},
                              {"quant_method", "fp8"},
                              {"weight_block_size", {128, 128}},
                              {"ignored_layers", ignored}};
  return c;
}

SynthReport synthesize_checkpoint(const fs::path& dst, const SynthOptions& o) {
  json doc = synth_config(o);
  MimoConfig config = MimoConfig::parse(doc, "synthesized config");
  Layout layout = plan_layout(config, default_mtp_layers(o));
  auto specs = file_order(layout);

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
  for (const auto& g : layout.fp8) write_fp8_group(g, o.seed, writer, index);
  writer.commit();
  return {writer.tensor_count(), total, writer.shard_count()};
}

}  // namespace moeckpt
