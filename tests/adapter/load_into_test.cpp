// Loading an HF checkpoint into destinations a model owns: the same bytes as from-hf, row windows
// read only their rows' bytes, dtype conversion as torch's copy_, missing/unexpected reported.
#include <gtest/gtest.h>

#include <cstring>
#include <mutex>

#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/numerics.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;

struct Native {
  Dtype dtype;
  std::vector<uint64_t> shape;
  std::vector<uint8_t> bytes;
};

std::map<std::string, Native> tensors_of(const fs::path& dir) {
  auto ck = Checkpoint::open(dir);
  std::map<std::string, Native> out;
  for (const auto& n : ck.names()) {
    const auto* e = ck.find(n);
    out[n] = {e->info->dtype, e->info->shape, ck.read_all(*e)};
  }
  return out;
}

uint64_t row_bytes(const Native& t, Dtype dt) {
  uint64_t n = dtype_size(dt);
  for (size_t d = 1; d < t.shape.size(); ++d) n *= t.shape[d];
  return n;
}

class LoadInto : public ::testing::Test {
 protected:
  void SetUp() override {
    SynthOptions o;
    o.seed = 5;
    synthesize_checkpoint(dir_ / "hf", o);
    from_hf_dir(dir_ / "hf", dir_ / "native", {});
    want_ = tensors_of(dir_ / "native");
  }
  test::TempDir dir_;
  std::map<std::string, Native> want_;
};

// Every native tensor as a destination of its own dtype: the bytes from-hf writes.
TEST_F(LoadInto, WholeTensorsEqualFromHf) {
  std::map<std::string, std::vector<uint8_t>> got;
  std::vector<LoadDestination> dests;
  for (const auto& [name, t] : want_) {
    got[name].assign(t.bytes.size(), 0xAB);
    dests.push_back({name, t.dtype, t.shape, 0, -1, got[name]});
  }
  auto r = load_hf_into(dir_ / "hf", dests, {});
  EXPECT_TRUE(r.missing.empty());
  EXPECT_TRUE(r.unexpected.empty());
  EXPECT_EQ(r.tensors, want_.size());
  for (const auto& [name, t] : want_) EXPECT_EQ(got[name], t.bytes) << name;
}

// Three "ranks", each holding a third of every tensor's rows: together the whole, each reading
// less than the whole checkpoint (experts: only its slots' bytes).
TEST_F(LoadInto, RowWindowsReadOnlyTheirRows) {
  std::map<std::string, std::vector<uint8_t>> got;
  for (const auto& [name, t] : want_) got[name].assign(t.bytes.size(), 0);
  const auto full = load_hf_into(dir_ / "hf", {}, {}).bytes_read;  // planning reads only
  uint64_t total = 0;
  for (int rank = 0; rank < 3; ++rank) {
    std::vector<LoadDestination> dests;
    for (auto& [name, t] : want_) {
      const int64_t rows = t.shape.empty() ? 1 : static_cast<int64_t>(t.shape[0]);
      const int64_t r0 = rows * rank / 3, r1 = rows * (rank + 1) / 3;
      const uint64_t rb = row_bytes(t, t.dtype);
      dests.push_back(
          {name, t.dtype, t.shape, r0, r1, std::span(got[name]).subspan(r0 * rb, (r1 - r0) * rb)});
    }
    auto r = load_hf_into(dir_ / "hf", dests, {});
    EXPECT_TRUE(r.unexpected.empty());
    total += r.bytes_read;
  }
  for (const auto& [name, t] : want_) EXPECT_EQ(got[name], t.bytes) << name;
  uint64_t hf_bytes = 0;
  for (const auto& e : fs::directory_iterator(dir_ / "hf"))
    if (e.path().extension() == ".safetensors") hf_bytes += fs::file_size(e.path());
  // Each rank reads its rows once (plus the scales every plan checks, `full`): the three
  // together read about the checkpoint once, not three times.
  EXPECT_LT(total, hf_bytes + 3 * full + hf_bytes / 4) << total << " vs " << hf_bytes;
}

TEST_F(LoadInto, ExpertWindowReadsOnlyItsExperts) {
  const std::string name = "model.layers.1.mlp.experts.gate_and_up_projs";
  const auto& t = want_.at(name);
  const uint64_t rb = row_bytes(t, t.dtype);
  std::vector<uint8_t> one(rb), all(t.bytes.size());
  auto r1 = load_hf_into(dir_ / "hf", {{name, t.dtype, t.shape, 2, 3, one}}, {});
  auto r8 = load_hf_into(dir_ / "hf", {{name, t.dtype, t.shape, 0, -1, all}}, {});
  EXPECT_EQ(std::vector<uint8_t>(t.bytes.begin() + 2 * rb, t.bytes.begin() + 3 * rb), one);
  EXPECT_EQ(all, t.bytes);
  EXPECT_LT(r1.bytes_read, r8.bytes_read);
  EXPECT_FALSE(r1.unexpected.empty());  // every other tensor of the checkpoint
}

// A destination of another floating dtype gets the values converted as torch's copy_ does:
// BF16 -> F32 exactly, F32 (the router) -> BF16 rounded to nearest even.
TEST_F(LoadInto, DtypesAreConvertedAsCopyDoes) {
  const std::string w = "model.layers.0.self_attn.q_proj.weight";
  const std::string router = "model.layers.1.mlp.gate.weight";
  const auto& tw = want_.at(w);
  const auto& tr = want_.at(router);
  ASSERT_EQ(tw.dtype, Dtype::BF16);
  ASSERT_EQ(tr.dtype, Dtype::F32);
  std::vector<uint8_t> wf(tw.bytes.size() * 2), rb(tr.bytes.size() / 2);
  load_hf_into(dir_ / "hf",
               {{w, Dtype::F32, tw.shape, 0, -1, wf}, {router, Dtype::BF16, tr.shape, 0, -1, rb}},
               {});
  for (size_t i = 0; i < tw.bytes.size() / 2; ++i) {
    uint16_t b;
    float f;
    std::memcpy(&b, &tw.bytes[2 * i], 2);
    std::memcpy(&f, &wf[4 * i], 4);
    ASSERT_EQ(numerics::bf16_to_f32(b), f) << i;
  }
  for (size_t i = 0; i < tr.bytes.size() / 4; ++i) {
    uint16_t b;
    float f;
    std::memcpy(&f, &tr.bytes[4 * i], 4);
    std::memcpy(&b, &rb[2 * i], 2);
    ASSERT_EQ(numerics::f32_to_bf16_rne(f), b) << i;
  }
}

// F16 and F64 destinations: F16 rounded to nearest even as torch's copy_ (not BF16 bits, as
// before), F64 widened exactly; FP8 and integer destinations of a floating tensor are refused.
TEST_F(LoadInto, F16AndF64DestinationsConvertAsCopyDoes) {
  const std::string w = "model.layers.0.self_attn.q_proj.weight";
  const std::string router = "model.layers.1.mlp.gate.weight";
  const auto& tw = want_.at(w);
  const auto& tr = want_.at(router);
  const auto& te = want_.at("model.embed_tokens.weight");
  ASSERT_EQ(te.dtype, Dtype::BF16);
  std::vector<uint8_t> wh(tw.bytes.size()), rh(tr.bytes.size() / 2), wd(te.bytes.size() * 4);
  load_hf_into(dir_ / "hf",
               {{w, Dtype::F16, tw.shape, 0, -1, wh},
                {router, Dtype::F16, tr.shape, 0, -1, rh},
                {"model.embed_tokens.weight", Dtype::F64, te.shape, 0, -1, wd}},
               {});
  for (size_t i = 0; i < tw.bytes.size() / 2; ++i) {
    uint16_t b, h;
    std::memcpy(&b, &tw.bytes[2 * i], 2);
    std::memcpy(&h, &wh[2 * i], 2);
    ASSERT_EQ(numerics::f32_to_f16_rne(numerics::bf16_to_f32(b)), h) << i;
  }
  for (size_t i = 0; i < tr.bytes.size() / 4; ++i) {
    float f;
    uint16_t h;
    std::memcpy(&f, &tr.bytes[4 * i], 4);
    std::memcpy(&h, &rh[2 * i], 2);
    ASSERT_EQ(numerics::f32_to_f16_rne(f), h) << i;
  }
  for (size_t i = 0; i < te.bytes.size() / 2; ++i) {
    uint16_t b;
    double d;
    std::memcpy(&b, &te.bytes[2 * i], 2);
    std::memcpy(&d, &wd[8 * i], 8);
    ASSERT_EQ(static_cast<double>(numerics::bf16_to_f32(b)), d) << i;
  }
  for (Dtype bad : {Dtype::F8_E4M3, Dtype::F8_E5M2, Dtype::I32, Dtype::BOOL}) {
    std::vector<uint8_t> buf(tw.bytes.size() / 2 * dtype_size(bad));
    try {
      load_hf_into(dir_ / "hf", {{w, bad, tw.shape, 0, -1, buf}}, {});
      ADD_FAILURE() << dtype_name(bad) << " not refused";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kInvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what();
    }
  }
}

// require_all: a destination without a source is refused before anything is written.
TEST_F(LoadInto, RequireAllRefusesBeforeWriting) {
  std::map<std::string, std::vector<uint8_t>> got;
  std::vector<LoadDestination> dests;
  for (const auto& [name, t] : want_) {
    got[name].assign(t.bytes.size(), 0xAB);
    dests.push_back({name, t.dtype, t.shape, 0, -1, got[name]});
  }
  std::vector<uint8_t> extra(8, 0xAB);
  dests.push_back({"model.layers.0.extra.weight", Dtype::BF16, {4}, 0, -1, extra});
  LoadOptions strict;
  strict.require_all = true;
  try {
    load_hf_into(dir_ / "hf", dests, {}, {}, strict);
    ADD_FAILURE() << "not refused";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kConfigMismatch) << e.what();
    EXPECT_NE(std::string(e.what()).find("model.layers.0.extra.weight"), std::string::npos);
  }
  for (const auto& [name, bytes] : got)
    EXPECT_EQ(bytes, std::vector<uint8_t>(bytes.size(), 0xAB)) << name;
}

// A staged destination (GPU memory, in the Python package) receives every byte once, as pieces
// at their offsets, converted to its dtype: the same bytes as a direct write.
TEST_F(LoadInto, StagedPiecesCoverTheDestinationOnce) {
  std::map<std::string, std::vector<uint8_t>> got;
  std::map<std::string, uint64_t> delivered;
  std::mutex m;
  std::vector<LoadDestination> dests;
  for (const auto& [name, t] : want_) {
    got[name].assign(t.bytes.size(), 0);
    LoadDestination d{name, t.dtype, t.shape, 0, -1, {}};
    d.staged_bytes = t.bytes.size();
    d.stage = [&, name](uint64_t offset, std::span<const uint8_t> piece) {
      std::lock_guard lock(m);
      ASSERT_LE(offset + piece.size(), got[name].size());
      std::memcpy(got[name].data() + offset, piece.data(), piece.size());
      delivered[name] += piece.size();
    };
    dests.push_back(std::move(d));
  }
  load_hf_into(dir_ / "hf", dests, {});
  for (const auto& [name, t] : want_) {
    EXPECT_EQ(got[name], t.bytes) << name;
    EXPECT_EQ(delivered[name], t.bytes.size()) << name;
  }
}

TEST_F(LoadInto, MissingUnexpectedAndBadDestinations) {
  const std::string w = "model.layers.0.self_attn.q_proj.weight";
  const auto& t = want_.at(w);
  std::vector<uint8_t> buf(t.bytes.size()), small(8);
  auto r = load_hf_into(dir_ / "hf",
                        {{w, t.dtype, t.shape, 0, -1, buf},
                         {"model.layers.0.self_attn.nonexistent", Dtype::BF16, {4}, 0, -1, small}},
                        {});
  EXPECT_EQ(r.missing, std::vector<std::string>{"model.layers.0.self_attn.nonexistent"});
  EXPECT_EQ(r.unexpected.size(), want_.size() - 1);
  EXPECT_EQ(buf, t.bytes);
  auto kind = [&](std::vector<LoadDestination> d) {
    try {
      load_hf_into(dir_ / "hf", d, {});
    } catch (const Error& e) {
      return e.kind();
    }
    return ErrorKind::kInterrupted;  // no error: a kind no check expects
  };
  auto shape = t.shape;
  shape[0] += 1;
  EXPECT_EQ(kind({{w, t.dtype, shape, 0, -1, buf}}), ErrorKind::kConfigMismatch);
  EXPECT_EQ(kind({{w, t.dtype, t.shape, 0, -1, small}}), ErrorKind::kInvalidArgument);
  EXPECT_EQ(kind({{w, t.dtype, t.shape, 2, 1, small}}), ErrorKind::kInvalidArgument);
  EXPECT_EQ(kind({{w, Dtype::U8, t.shape, 0, -1, buf}}), ErrorKind::kInvalidArgument);
  EXPECT_EQ(kind({{w, t.dtype, t.shape, 0, -1, buf}, {w, t.dtype, t.shape, 0, -1, buf}}),
            ErrorKind::kInvalidArgument);
}

}  // namespace
}  // namespace moeckpt

namespace moeckpt {
namespace {

// Every refusal of the checkpoint's data (NaN codes, bad and overflowing scales) is made by the
// checking pass, before the first byte lands: the destinations keep what they held, whichever
// shard and position of the plan the bad value is in; kCheckOnly writes nothing either way.
TEST(LoadIntoRefusals, DataRefusalsLeaveEveryDestinationAsItWas) {
  const fs::path data = MOECKPT_TEST_DATA_DIR;
  auto base = tensors_of(data / "corpus_base" / "native");
  for (const char* c :
       {"expert_fp8_nan_7f", "expert_fp8_nan_ff", "dense_fp8_nan_7f", "attention_fp8_nan_ff",
        "attention_scale_nan", "expert_scale_zero", "expert_scale_negative", "expert_scale_posinf",
        "expert_scale_overflows", "dense_scale_zero", "dense_scale_overflows_bf16"}) {
    for (auto phase : {LoadOptions::Phase::kCheckAndWrite, LoadOptions::Phase::kCheckOnly}) {
      SCOPED_TRACE(c);
      std::map<std::string, std::vector<uint8_t>> got;
      std::vector<LoadDestination> dests;
      for (const auto& [name, t] : base) {
        got[name].assign(t.bytes.size(), 0xAB);
        dests.push_back({name, t.dtype, t.shape, 0, -1, got[name]});
      }
      LoadOptions lo;
      lo.phase = phase;
      try {
        load_hf_into(data / "malformed" / c, dests, {}, {}, lo);
        ADD_FAILURE() << "not refused";
      } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::kNumeric) << e.what();
      }
      for (const auto& [name, bytes] : got)
        EXPECT_EQ(bytes, std::vector<uint8_t>(bytes.size(), 0xAB)) << name;
    }
  }
}

// A finite scale whose product with its block's codes overflows: a load checks the scale rows it
// reads (no whole-checkpoint pre-scan) and refuses it as from-hf does, for experts (dequantized
// into their slots) and plain weights alike.
TEST(LoadIntoRefusals, OverflowingScalesAreRefused) {
  const fs::path data = MOECKPT_TEST_DATA_DIR;
  auto base = tensors_of(data / "corpus_base" / "native");
  for (const char* c : {"expert_scale_overflows", "dense_scale_overflows_bf16"}) {
    SCOPED_TRACE(c);
    std::map<std::string, std::vector<uint8_t>> got;
    std::vector<LoadDestination> dests;
    for (const auto& [name, t] : base) {
      got[name].assign(t.bytes.size(), 0);
      dests.push_back({name, t.dtype, t.shape, 0, -1, got[name]});
    }
    try {
      load_hf_into(data / "malformed" / c, dests, {});
      ADD_FAILURE() << "not refused";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kNumeric) << e.what();
      EXPECT_NE(std::string(e.what()).find("not finite in BF16"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("_scale_inv"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace moeckpt
