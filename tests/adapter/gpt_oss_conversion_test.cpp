// gpt-oss through the folder commands and the planner: the spec's names for stacked MXFP4 experts
// (members, scales, shapes, the HF BF16 layout's names); from-hf and the default to-hf give the
// published tensors back byte for byte from EP 1 and from every rank of an uneven split, with the
// MXFP4 quantization_config; an EP rank's plan reads only its experts' rows of every stacked
// tensor; the decode of hand-made groups (every E2M1 code, E8M0 0 and 254; 255 refused as NaN by
// default, 2^128 in compat as torch.ldexp makes it); dequantize writes the HF BF16 layout;
// refusals of malformed stacked tensors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/model_spec.hpp"
#include "moeckpt/numerics.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/synth.hpp"
#include "moeckpt/verify.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

ModelConfig tiny_config() {
  return ModelConfig::parse(model_preset("gpt-oss-tiny"), "gpt-oss-tiny");
}

TEST(GptOssSpec, NamesStackedExpertsAndTheirMembers) {
  const auto spec = model_spec_for(tiny_config());
  EXPECT_EQ(spec->layout_name(), "gpt-oss");
  EXPECT_TRUE(spec->hf_experts_stacked());
  const std::string blocks = "model.layers.1.mlp.experts.gate_up_proj_blocks";
  EXPECT_EQ(spec->stacked_expert_member(blocks, 5), blocks + "[5]");
  EXPECT_EQ(spec->stacked_expert_member("model.layers.1.mlp.experts.down_proj_scales", 0),
            "model.layers.1.mlp.experts.down_proj_scales[0]");
  EXPECT_FALSE(spec->stacked_expert_member("model.layers.1.mlp.experts.gate_up_proj_bias", 0));
  EXPECT_FALSE(spec->stacked_expert_member(blocks + "[5]", 0));
  EXPECT_EQ(spec->stack_of_member(blocks + "[5]"), std::make_pair(blocks, int64_t{5}));
  EXPECT_FALSE(spec->stack_of_member(blocks + "[05]"));
  EXPECT_FALSE(spec->stack_of_member(blocks + "[x]"));
  auto k = spec->classify(blocks + "[5]");
  EXPECT_EQ(k.kind, TensorKind::kExpertProj);
  EXPECT_EQ(k.projection, Projection::kGateAndUp);
  EXPECT_EQ(k.expert, 5);
  EXPECT_EQ(k.layer, 1);
  k = spec->classify("model.layers.1.mlp.experts.down_proj_scales[7]");
  EXPECT_TRUE(k.is_scale && k.is_mx_scale);
  EXPECT_EQ(k.weight_name, "model.layers.1.mlp.experts.down_proj_blocks[7]");
  EXPECT_EQ(spec->mx_scale_name("model.layers.1.mlp.experts.down_proj_blocks[7]"),
            "model.layers.1.mlp.experts.down_proj_scales[7]");
  EXPECT_EQ(spec->expert_weight_name("model.", 1, 3, Projection::kDown),
            "model.layers.1.mlp.experts.down_proj_blocks[3]");
  EXPECT_EQ(spec->classify("model.layers.0.mlp.experts.down_proj_bias").kind,
            TensorKind::kExpertBias);
  EXPECT_EQ(spec->classify("model.layers.0.self_attn.sinks").kind, TensorKind::kAttentionSink);
  // hidden 64, intermediate 96: gate_up [192, 64] as [192, 32] bytes, down [64, 96] as [64, 48].
  EXPECT_EQ(spec->stacked_shape(blocks, {192, 32}, 8), (std::vector<uint64_t>{8, 192, 2, 16}));
  EXPECT_EQ(spec->stacked_shape("model.layers.1.mlp.experts.gate_up_proj_scales", {192, 2}, 8),
            (std::vector<uint64_t>{8, 192, 2}));
  EXPECT_EQ(spec->expert_hf_shape(Projection::kGateAndUp), (std::vector<uint64_t>{192, 64}));
  // The router under mlp.gate natively; the grouped tensors are the HF BF16 layout's.
  EXPECT_EQ(spec->native_name_of("model.layers.0.mlp.router.weight"),
            "model.layers.0.mlp.gate.weight");
  EXPECT_EQ(spec->native_name_of("model.layers.0.mlp.router.bias"), "model.layers.0.mlp.gate.bias");
  EXPECT_EQ(spec->hf_name_of("model.layers.0.mlp.gate.bias"), "model.layers.0.mlp.router.bias");
  EXPECT_EQ(spec->hf_name_of("model.layers.0.mlp.experts.gate_and_up_projs"),
            "model.layers.0.mlp.experts.gate_up_proj");
  EXPECT_EQ(spec->native_backend_name("model.layers.0.self_attn.sinks", AttnBackend::kTe)->name,
            "model.layers.0.self_attn.attn_module.softmax_offset");
  EXPECT_FALSE(spec->is_published_fp8("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_FALSE(spec->is_published_f32(spec->classify("model.layers.0.mlp.router.bias")));
}

TEST(GptOssSpec, ConfigRefusals) {
  auto c = model_preset("gpt-oss-tiny");
  c["quantization_config"] = {{"quant_method", "fp8"}, {"weight_block_size", {128, 128}}};
  EXPECT_THROW(ModelConfig::parse(c, "c"), Error);
  c = model_preset("gpt-oss-tiny");
  c["intermediate_size"] = 80;  // not a multiple of the MXFP4 group
  EXPECT_THROW(ModelConfig::parse(c, "c"), Error);
  c = model_preset("gpt-oss-tiny");
  c["layer_types"] = {"full_attention"};
  EXPECT_THROW(ModelConfig::parse(c, "c"), Error);
  c = model_preset("gpt-oss-tiny");
  c["layer_types"] = {"full_attention", "chunked_attention"};
  EXPECT_THROW(ModelConfig::parse(c, "c"), Error);
  EXPECT_EQ(ModelConfig::parse(model_preset("gpt-oss-120b", {2, 16, 1024}), "c").n_routed_experts,
            16);
}

std::vector<std::pair<std::string, std::vector<uint8_t>>> all_bytes(const fs::path& dir) {
  auto ck = Checkpoint::open(dir);
  std::vector<std::pair<std::string, std::vector<uint8_t>>> out;
  for (const auto& n : ck.names()) out.emplace_back(n, ck.read_all(*ck.find(n)));
  return out;
}

TEST(GptOssConversion, RoundTripsGiveThePublishedTensorsBack) {
  test::TempDir dir;
  SynthOptions o;
  o.preset = "gpt-oss-tiny";
  o.seed = 3;
  synthesize_checkpoint(dir / "hf", o);
  from_hf_dir(dir / "hf", dir / "native", {});
  std::vector<fs::path> ranks;
  for (int64_t r = 0; r < 3; ++r) {  // 8 experts over 3 ranks: 3, 3, 2
    FromHfOptions ep;
    ep.ep_size = 3;
    ep.ep_rank = r;
    ranks.push_back(dir / ("ep" + std::to_string(r)));
    from_hf_dir(dir / "hf", ranks.back(), ep);
    auto ck = Checkpoint::open(ranks.back());
    for (const auto& n : ck.names())
      if (n.ends_with("gate_and_up_projs") ||
          (n.ends_with("_bias") && n.find("experts") != n.npos)) {
        EXPECT_EQ(ck.find(n)->info->shape[0], r < 2 ? 3u : 2u) << n;
      }
  }
  to_hf_dirs({dir / "native"}, dir / "back", {}, std::nullopt);
  to_hf_dirs(ranks, dir / "back_ranks", {}, std::nullopt);
  const auto want = all_bytes(dir / "hf");
  EXPECT_EQ(all_bytes(dir / "back"), want);
  EXPECT_EQ(all_bytes(dir / "back_ranks"), want);
  const auto config = json::parse(test::read_text(dir / "back" / "config.json"));
  EXPECT_EQ(config["quantization_config"]["quant_method"], "mxfp4");
  auto r = verify_checkpoints(dir / "hf", dir / "native", {});
  EXPECT_TRUE(r.ok());
  // dequantize: the HF BF16 layout (gate_up_proj [E, hidden, 2I]), what to-hf without quantization
  // writes too, and no quantization_config.
  dequantize_dir(dir / "hf", dir / "bf16", {});
  ToHfOptions none;
  none.quant = QuantMode::kNone;
  to_hf_dirs({dir / "native"}, dir / "noquant", none, std::nullopt);
  EXPECT_EQ(all_bytes(dir / "bf16"), all_bytes(dir / "noquant"));
  auto ck = Checkpoint::open(dir / "bf16");
  ASSERT_NE(ck.find("model.layers.0.mlp.experts.gate_up_proj"), nullptr);
  EXPECT_EQ(ck.find("model.layers.0.mlp.experts.gate_up_proj")->info->shape,
            (std::vector<uint64_t>{8, 64, 192}));
  EXPECT_FALSE(
      json::parse(test::read_text(dir / "bf16" / "config.json")).contains("quantization_config"));
  // That layout reads back (every EP rank's rows as from the MXFP4 folder) and quantizes into the
  // published bytes; verify compares the two HF forms expert by expert.
  from_hf_dir(dir / "bf16", dir / "native_bf16", {});
  EXPECT_EQ(all_bytes(dir / "native_bf16"), all_bytes(dir / "native"));
  FromHfOptions ep;
  ep.ep_size = 3;
  ep.ep_rank = 2;
  from_hf_dir(dir / "bf16", dir / "ep2_bf16", ep);
  EXPECT_EQ(all_bytes(dir / "ep2_bf16"), all_bytes(ranks[2]));
  quantize_dir(dir / "bf16", dir / "mxfp4", {});
  EXPECT_EQ(all_bytes(dir / "mxfp4"), want);
  EXPECT_TRUE(verify_checkpoints(dir / "hf", dir / "bf16", {}).ok());
  try {
    quantize_dir(dir / "hf", dir / "again", {});
    ADD_FAILURE() << "quantize of an MXFP4 folder was not refused";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already MXFP4"), std::string::npos) << e.what();
  }
}

TEST(GptOssConversion, AnEpRankReadsOnlyItsExpertsRows) {
  test::TempDir dir;
  SynthOptions o;
  o.preset = "gpt-oss-tiny";
  synthesize_checkpoint(dir / "hf", o);
  CheckpointSource src({dir / "hf"});
  const auto config = ModelConfig::load(dir / "hf" / "config.json");
  for (int64_t r = 0; r < 3; ++r) {
    FromHfOptions ep;
    ep.ep_size = 3;
    ep.ep_rank = r;
    const int64_t first = r < 2 ? 3 * r : 6, count = r < 2 ? 3 : 2;
    Plan plan = plan_from_hf(src, config, ep);
    uint64_t expert_bytes = 0;
    for (const auto& task : plan.tasks)
      for (const auto& range : task_reads(task)) {
        const SourceTensor* t = range.tensor;
        uint64_t begin = range.begin, end = range.end;
        while (t->stored) {
          begin += t->slice_offset;
          end += t->slice_offset;
          t = t->stored;
        }
        if (t->name.find(".mlp.experts.") == std::string::npos) continue;
        const uint64_t row = t->nbytes / t->shape[0];  // one expert's bytes
        EXPECT_GE(begin, static_cast<uint64_t>(first) * row) << t->name;
        EXPECT_LE(end, static_cast<uint64_t>(first + count) * row) << t->name;
        expert_bytes += end - begin;
      }
    // Every byte of its experts, blocks, scales and biases alike (8 experts' worth of each
    // stacked tensor is 153 KiB + the biases).
    uint64_t all = 0;
    for (const auto& t : src.tensors())
      if (t.name.find(".mlp.experts.") != std::string::npos) all += t.nbytes;
    EXPECT_EQ(expert_bytes, all / 8 * static_cast<uint64_t>(count)) << r;
  }
}

// One layer's stacked tensors, hand-made: expert e's gate_up group 0 of row 0 holds the 16 E2M1
// codes twice; the group's E8M0 scale is `scale`; every other group code 0x22 (1.0, 1.0) under
// scale 127 (1.0).
void write_layer(const fs::path& dir, uint8_t scale) {
  const auto base = model_preset("gpt-oss-micro");  // hidden 32, intermediate 64, 4 experts
  fs::create_directories(dir / "hf");
  SynthOptions o;
  o.preset = "gpt-oss-micro";
  synthesize_checkpoint(dir / "synth", o);
  auto ck = Checkpoint::open(dir / "synth");
  std::vector<TensorSpec> specs;
  std::vector<std::vector<uint8_t>> data;
  for (const auto& n : ck.names()) {
    const auto* e = ck.find(n);
    specs.push_back({n, e->info->dtype, e->info->shape});
    auto bytes = ck.read_all(*e);
    if (n.ends_with("gate_up_proj_blocks")) {
      std::fill(bytes.begin(), bytes.end(), 0x22);
      for (int i = 0; i < 16; ++i) bytes[static_cast<size_t>(i)] = static_cast<uint8_t>(i * 0x11);
    }
    if (n.ends_with("gate_up_proj_scales")) {
      std::fill(bytes.begin(), bytes.end(), 127);
      bytes[0] = scale;
    }
    data.push_back(std::move(bytes));
  }
  CheckpointWriter w(dir / "hf", specs, {});
  for (size_t i = 0; i < specs.size(); ++i) w.write(i, 0, data[i]);
  w.commit();
  fs::copy_file(dir / "synth" / "config.json", dir / "hf" / "config.json");
  (void)base;
}

// gate_and_up_projs[0][c][0] (input c of output row 0 of expert 0), as float.
std::vector<float> first_row(const fs::path& native) {
  auto ck = Checkpoint::open(native);
  const auto* e = ck.find("model.layers.0.mlp.experts.gate_and_up_projs");
  const auto bytes = ck.read_all(*e);
  const uint64_t width = e->info->shape[2];
  std::vector<float> out;
  for (uint64_t c = 0; c < 32; ++c) {
    uint16_t b;
    std::memcpy(&b, &bytes[c * width * 2], 2);
    out.push_back(numerics::bf16_to_f32(b));
  }
  return out;
}

TEST(GptOssConversion, DecodesEveryCodeAndTheScaleExtremes) {
  // Input 2c (low nibble) and 2c + 1 (high) of byte c = c * 0x11: code c twice.
  const float e2m1[16] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6, -0.0f, -0.5f, -1, -1.5f, -2, -3, -4, -6};
  for (uint8_t scale : {uint8_t{0}, uint8_t{1}, uint8_t{127}, uint8_t{200}, uint8_t{252}}) {
    test::TempDir dir;
    write_layer(dir.path(), scale);
    from_hf_dir(dir / "hf", dir / "native", {});
    const auto got = first_row(dir / "native");
    for (int c = 0; c < 32; ++c) {
      const float want = std::ldexp(e2m1[c / 2], scale - 127);  // exact in BF16 (2^-128 .. 6x2^125)
      EXPECT_EQ(got[static_cast<size_t>(c)], want) << int(scale) << " " << c;
      EXPECT_EQ(std::signbit(got[static_cast<size_t>(c)]), std::signbit(want));
    }
  }
  {  // 254: 2^127 x 2 and more overflow BF16: refused by default, inf in compat.
    test::TempDir dir;
    write_layer(dir.path(), 254);
    EXPECT_THROW(from_hf_dir(dir / "hf", dir / "native", {}), Error);
    EXPECT_FALSE(fs::exists(dir / "native" / kSingleFileName));
    FromHfOptions compat;
    compat.compat = Compat::kAutomodel07;
    from_hf_dir(dir / "hf", dir / "compat", compat);
    const auto got = first_row(dir / "compat");
    EXPECT_EQ(got[2], std::ldexp(0.5f, 127));
    EXPECT_EQ(got[6], std::ldexp(1.5f, 127));
    EXPECT_TRUE(std::isinf(got[8]) && got[8] > 0);
  }
  {  // 255: E8M0 NaN, refused by default; Automodel's torch.ldexp makes it 2^128 (0 stays 0).
    test::TempDir dir;
    write_layer(dir.path(), 255);
    try {
      from_hf_dir(dir / "hf", dir / "native", {});
      ADD_FAILURE() << "E8M0 NaN was not refused";
    } catch (const Error& e) {
      EXPECT_EQ(e.info().kind, ErrorKind::kNumeric);
      EXPECT_NE(e.info().tensor.find("gate_up_proj_scales"), std::string::npos) << e.what();
    }
    FromHfOptions compat;
    compat.compat = Compat::kAutomodel07;
    from_hf_dir(dir / "hf", dir / "compat", compat);
    const auto got = first_row(dir / "compat");
    EXPECT_EQ(got[0], 0.0f);
    EXPECT_FALSE(std::signbit(got[0]));
    EXPECT_TRUE(std::signbit(got[16]) && got[16] == 0.0f);  // -0 stays -0
    EXPECT_EQ(got[2], std::ldexp(1.0f, 127));               // 0.5 x 2^128
    EXPECT_TRUE(std::isinf(got[4]) && got[4] > 0);
    EXPECT_EQ(got[18], -std::ldexp(1.0f, 127));  // -0.5 x 2^128
    EXPECT_TRUE(std::isinf(got[20]) && got[20] < 0);
  }
}

TEST(GptOssConversion, RefusesMalformedStackedTensors) {
  test::TempDir dir;
  SynthOptions o;
  o.preset = "gpt-oss-micro";
  synthesize_checkpoint(dir / "synth", o);
  auto ck = Checkpoint::open(dir / "synth");
  // Each case rewrites one tensor's header: name -> (dtype, shape).
  struct Case {
    std::string tensor;
    Dtype dtype;
    std::vector<uint64_t> shape;
    std::string says;
  };
  const std::vector<Case> cases{
      {"model.layers.0.mlp.experts.gate_up_proj_blocks", Dtype::U8, {3, 128, 1, 16}, "experts"},
      {"model.layers.0.mlp.experts.gate_up_proj_blocks",
       Dtype::U8,
       {4, 128, 16},
       "U8 [4, 128, 1, 16]"},
      {"model.layers.0.mlp.experts.gate_up_proj_scales", Dtype::I8, {4, 128, 1}, "I8"},
      {"model.layers.0.mlp.experts.down_proj_scales", Dtype::U8, {4, 32, 1}, "does not fit"},
      {"model.layers.0.mlp.experts.down_proj_bias", Dtype::BF16, {4, 16}, "expert bias"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.tensor + " " + c.says);
    test::TempDir d;
    fs::create_directories(d / "hf");
    std::vector<TensorSpec> specs;
    std::vector<std::vector<uint8_t>> data;
    for (const auto& n : ck.names()) {
      const auto* e = ck.find(n);
      TensorSpec s{n, e->info->dtype, e->info->shape};
      auto bytes = ck.read_all(*e);
      if (n == c.tensor) {
        s = {n, c.dtype, c.shape};
        bytes.resize(s.nbytes());
      }
      specs.push_back(s);
      data.push_back(std::move(bytes));
    }
    CheckpointWriter w(d / "hf", specs, {});
    for (size_t i = 0; i < specs.size(); ++i) w.write(i, 0, data[i]);
    w.commit();
    fs::copy_file(dir / "synth" / "config.json", d / "hf" / "config.json");
    for (int compat = 0; compat < 2; ++compat) {
      FromHfOptions fo;
      if (compat) fo.compat = Compat::kAutomodel07;
      try {
        from_hf_dir(d / "hf", d / "out", fo);
        ADD_FAILURE() << "not refused";
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(c.says), std::string::npos) << e.what();
      }
      EXPECT_FALSE(fs::exists(d / "out" / kSingleFileName));
    }
  }
}

}  // namespace
}  // namespace moeckpt
