// --help says what the tool takes: every synth preset the library knows (from the registry, not a
// copy that falls behind), the defaults of options that have one, and that a checkpoint argument
// may be a Hugging Face repo id.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "moeckpt/model_spec.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

using test::run_cli;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

std::string help_of(const std::string& command) {
  auto r = run_cli({command, "--help"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return r.out;
}

TEST(HelpText, SynthListsEveryPresetAndShowsDefaults) {
  const auto help = help_of("synth");
  // The option's own text lists them (beside CLI11's list of accepted values).
  const auto text = help.substr(help.find("the layout and size to synthesize"));
  ASSERT_FALSE(moeckpt::model_preset_names().empty());
  for (const auto& name : moeckpt::model_preset_names())
    EXPECT_TRUE(contains(text, " " + name + ",") || contains(text, " " + name + " ("))
        << name << "\n"
        << help;
  EXPECT_TRUE(contains(help, "}=tiny")) << help;  // --preset's default
  EXPECT_TRUE(contains(help, "--seed UINT:INT in [0 - 4294967295]=0")) << help;
  // Defaults that depend on the preset are said in words, not as a value.
  EXPECT_TRUE(contains(help, "(default: the preset's")) << help;
  EXPECT_TRUE(contains(help, "v26 presets; default 4")) << help;
}

TEST(HelpText, ConversionsShowTheirDefaults) {
  for (const std::string command : {"from-hf", "to-hf", "dequantize", "quantize"}) {
    SCOPED_TRACE(command);
    const auto help = help_of(command);
    EXPECT_TRUE(contains(help, "]=5000000000")) << help;  // --shard-size
    EXPECT_TRUE(contains(help, "]=1073741824")) << help;  // --max-memory
    EXPECT_TRUE(contains(help, "--threads UINT:INT in [0 - 4096]=0")) << help;
    EXPECT_TRUE(contains(help, "]=172800")) << help;  // --wait
    EXPECT_TRUE(contains(help, "--revision TEXT=main")) << help;
    // "Not given" sentinels show no value.
    EXPECT_FALSE(contains(help, "--workers INT:INT in [1 - 65536]=")) << help;
    EXPECT_FALSE(contains(help, "--worker INT:INT in [0 - 65535]=")) << help;
  }
  const auto fh = help_of("from-hf");
  EXPECT_TRUE(contains(fh, "--ep-size INT:INT in [1 - 1048576]=1")) << fh;
  EXPECT_TRUE(contains(fh, "}=none")) << fh;  // --compat
  EXPECT_TRUE(contains(fh, "--attn-backend TEXT:{sdpa,te}=sdpa")) << fh;
  EXPECT_TRUE(contains(fh, "--dtype TEXT:{bf16,f32}=bf16")) << fh;
  EXPECT_TRUE(contains(help_of("to-hf"), "--quant TEXT:{block,cast,none}=block"));
  EXPECT_TRUE(contains(help_of("plan"), "--command TEXT:{from-hf,dequantize,quantize}=from-hf"));
  EXPECT_TRUE(contains(help_of("verify"), "--rtol FLOAT:FLOAT >= 0=0"));
  EXPECT_TRUE(contains(help_of("finalize"), "=0"));
}

TEST(HelpText, CheckpointArgumentsMayBeRepoIds) {
  for (const std::string command :
       {"inspect", "from-hf", "to-hf", "dequantize", "quantize", "plan", "verify"}) {
    const auto help = help_of(command);
    EXPECT_TRUE(contains(help, "Hugging Face repo id")) << command << "\n" << help;
  }
  EXPECT_FALSE(contains(help_of("synth"), "repo id"));
  EXPECT_FALSE(contains(help_of("finalize"), "repo id"));
}

}  // namespace
}  // namespace moeckpt
