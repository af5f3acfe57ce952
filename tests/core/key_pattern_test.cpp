// User patterns over tensor names run in linear time: long names and pathological patterns that
// crash (stack overflow) or hang a backtracking engine are ordinary inputs here; anchoring follows
// Python's re.search / re.match; unsupported constructs are clear errors.
#include <gtest/gtest.h>

#include <string>

#include "core/key_pattern.hpp"
#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/plan.hpp"
#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

using Anchor = KeyPattern::Anchor;

TEST(KeyPattern, SearchAndMatchAnchoring) {
  const std::string key = "model.layers.1.mlp.experts.0.gate_proj.weight";
  EXPECT_TRUE(KeyPattern("experts", Anchor::kSearch).matches(key));
  EXPECT_FALSE(KeyPattern("experts", Anchor::kStart).matches(key));  // re.match
  EXPECT_TRUE(KeyPattern("model\\.layers\\.1", Anchor::kStart).matches(key));
  EXPECT_TRUE(KeyPattern("model", Anchor::kStart).matches(key));  // not anchored at the end
  EXPECT_FALSE(KeyPattern("weight$", Anchor::kStart).matches(key));
  EXPECT_TRUE(KeyPattern("weight$", Anchor::kSearch).matches(key));
  EXPECT_TRUE(KeyPattern("^(?:model\\.layers)", Anchor::kSearch).matches(key));
  EXPECT_TRUE(KeyPattern("", Anchor::kSearch).matches(key));
}

TEST(KeyPattern, LongNamesAndPathologicalPatternsAreLinear) {
  const std::string long_name(50'000, 'a');
  for (const char* p : {".*z", "(.|.)*Z", "(a|aa)*b", "(a*)*b", "(?:a+)+$x", "(x+x+)+y"}) {
    SCOPED_TRACE(p);
    for (auto anchor : {Anchor::kSearch, Anchor::kStart}) {
      KeyPattern k(p, anchor);
      EXPECT_FALSE(k.matches(long_name));
      EXPECT_FALSE(k.matches("model.layers.0.self_attn.q_proj.weight"));
    }
  }
  EXPECT_TRUE(KeyPattern(".*a$", Anchor::kStart).matches(long_name));
  // A 1 MB name with a pattern that backtracks exponentially elsewhere.
  EXPECT_FALSE(KeyPattern("(a|a)*c", Anchor::kSearch).matches(std::string(1 << 20, 'a')));
}

TEST(KeyPattern, UnsupportedAndInvalidPatternsAreClearErrors) {
  for (const char* p : {"(?=x)", "(?!x)", "(?<=x)y", "(a)\\1"}) {
    try {
      KeyPattern k(p, Anchor::kSearch);
      ADD_FAILURE() << p;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("RE2 syntax"), std::string::npos) << e.what();
    }
  }
  for (const char* p : {"(a", "[z-a]", "a{2,1}", "*"}) {
    try {
      KeyPattern k(p, Anchor::kSearch);
      ADD_FAILURE() << p;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("is invalid"), std::string::npos) << e.what();
    }
  }
}

TEST(KeyPattern, ExcludeOnAHugeTensorNameThroughThePlanner) {
  // A native tensor with a 50,000-character name and --exclude '.*z' (SIGSEGV with std::regex).
  test::TempDir dir;
  SynthOptions micro;
  micro.preset = "micro";
  synthesize_checkpoint(dir / "hf", micro);
  const auto config = ModelConfig::load(dir / "hf" / "config.json");
  const std::string name = "model." + std::string(50'000, 'x') + ".weight";
  std::vector<uint8_t> bytes(4);
  ToHfOptions o;
  o.quant = QuantMode::kNone;
  struct Case {
    Compat compat;
    const char* pattern;
    size_t kept;
  };
  for (auto [compat, pattern, kept] :
       {Case{Compat::kNone, ".*z", 1}, Case{Compat::kNone, "(.|.)*Z", 1},
        Case{Compat::kNone, "x{3}", 0}, Case{Compat::kAutomodel07, ".*z", 1},
        Case{Compat::kAutomodel07, "x", 1}, Case{Compat::kAutomodel07, "model\\.x+", 0}}) {
    SCOPED_TRACE(pattern);
    o.compat = compat;
    o.exclude_regex = pattern;
    auto out = convert_single_tensor_to_hf(name, Dtype::BF16, {2}, bytes, config, o);
    EXPECT_EQ(out.size(), kept);
  }
}

}  // namespace
}  // namespace moeckpt
