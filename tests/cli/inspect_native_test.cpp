// inspect on native (grouped-expert) folders: the layout, the EP rank and size and the global
// experts the folder holds (from the moeckpt.* metadata from-hf records), the experts per MoE
// layer (the grouped tensors' first dimension) and the grouped tensors, in text and JSON; and a
// clear line where the metadata, the grouped tensors and config.json disagree.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <vector>

#include "test_support.hpp"

namespace moeckpt {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::run_cli;

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

// What a preset's native folders hold: 8 routed experts in layers 1, 2 and 3 (DeepSeek's layer 3
// is its MTP layer, which has routed experts), grouped as [n, D, 2 * Ie] and [n, Ie, D].
struct Preset {
  std::string name;
  std::string model;
  std::vector<uint64_t> gate_and_up;  // one expert's slot: [D, 2 * Ie]
  std::vector<uint64_t> down;         // [Ie, D]
};

const Preset kPresets[] = {
    {"tiny", "MiMo-V2-Flash", {256, 256}, {128, 256}},
    {"deepseek-v3-tiny", "DeepSeek-V3", {320, 192}, {96, 320}},
};

// Rank r of w holds [start, start + count) of the 8 experts: the first 8 % w ranks one more.
struct Split {
  int64_t size, rank, start, count;
};
const Split kSplits[] = {
    {1, 0, 0, 8},                             // EP 1
    {2, 0, 0, 4}, {2, 1, 4, 4},               // EP 2, both ranks
    {3, 0, 0, 3}, {3, 1, 3, 3}, {3, 2, 6, 2}  // uneven EP: 8 over 3
};

std::vector<uint64_t> with_experts(uint64_t n, const std::vector<uint64_t>& slot) {
  std::vector<uint64_t> s{n};
  s.insert(s.end(), slot.begin(), slot.end());
  return s;
}

// Rewrites the __metadata__ of a single-file folder's shard (`edit` gets it as JSON).
void edit_metadata(const fs::path& dir, const std::function<void(json&)>& edit) {
  const auto file = dir / "model.safetensors";
  const auto bytes = test::read_bytes(file);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | bytes[static_cast<size_t>(i)];
  auto header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + static_cast<int64_t>(n));
  edit(header["__metadata__"]);
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keep the data 8-byte aligned
  test::write_bytes(file, test::raw_safetensors(
                              text, {bytes.begin() + 8 + static_cast<int64_t>(n), bytes.end()}));
}

void erase_ep_metadata(json& md) {
  for (const char* k : {"moeckpt.layout", "moeckpt.ep_size", "moeckpt.ep_rank",
                        "moeckpt.expert_start", "moeckpt.expert_count"})
    md.erase(k);
}

class InspectNative : public ::testing::TestWithParam<Preset> {
 protected:
  void SetUp() override {
    auto r = run_cli({"synth", hf(), "--preset", GetParam().name});
    ASSERT_EQ(r.exit_code, 0) << r.err;
  }
  std::string hf() const { return (dir_ / "hf").string(); }
  // from-hf of rank `rank` of `size` into a folder of its own.
  std::string convert(int64_t size, int64_t rank) const {
    const auto out = (dir_ / fmt::format("ep{}r{}", size, rank)).string();
    auto r = run_cli({"from-hf", hf(), out, "--ep-size", std::to_string(size), "--ep-rank",
                      std::to_string(rank), "--quiet"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return out;
  }
  test::TempDir dir_;
};

TEST_P(InspectNative, ReportsEachRanksExpertsInTextAndJson) {
  const Preset& p = GetParam();
  for (const Split& s : kSplits) {
    SCOPED_TRACE(fmt::format("{}: EP rank {} of {}", p.name, s.rank, s.size));
    const auto dir = convert(s.size, s.rank);
    const auto n = static_cast<uint64_t>(s.count);

    auto r = run_cli({"inspect", dir});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err, "");
    EXPECT_TRUE(contains(r.out, "model: " + p.model + "\n")) << r.out;
    EXPECT_TRUE(
        contains(r.out, fmt::format("\nlayout: native (grouped experts); EP rank {} of {} "
                                    "holds experts {}-{} ({} of 8)\n",
                                    s.rank, s.size, s.start, s.start + s.count - 1, s.count)))
        << r.out;
    EXPECT_TRUE(contains(r.out, fmt::format("\nexperts: {} in each of layers 1,2,3 (grouped "
                                            "tensors' first dimension; config: 8)\n",
                                            s.count)))
        << r.out;
    EXPECT_TRUE(contains(r.out, "\ngrouped expert tensors (name, count, shape, dtype):\n"))
        << r.out;
    for (const auto& [proj, slot] :
         {std::pair{"down_projs", p.down}, std::pair{"gate_and_up_projs", p.gate_and_up}}) {
      const auto shape = with_experts(n, slot);
      EXPECT_TRUE(std::regex_search(
          r.out, std::regex(fmt::format("\n  model\\.layers\\.\\*\\.mlp\\.experts\\.{} +3 x "
                                        "\\[{}, {}, {}\\] +BF16\n",
                                        proj, shape[0], shape[1], shape[2]))))
          << proj << "\n"
          << r.out;
    }
    EXPECT_FALSE(contains(r.out, "disagrees")) << r.out;
    EXPECT_FALSE(contains(r.out, "layout: HF")) << r.out;

    r = run_cli({"inspect", dir, "--json"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = json::parse(r.out);
    EXPECT_EQ(j.at("layout"), "native");
    EXPECT_EQ(j.at("model"), p.model);
    EXPECT_EQ(j.at("n_routed_experts"), 8);
    EXPECT_EQ(j.at("expert_parallel"), (json{{"recorded", true},
                                             {"ep_size", s.size},
                                             {"ep_rank", s.rank},
                                             {"expert_start", s.start},
                                             {"expert_count", s.count},
                                             {"disagreements", json::array()}}));
    EXPECT_EQ(j.at("experts_per_layer"), (json{{"1", s.count}, {"2", s.count}, {"3", s.count}}));
    const json grouped = json::array({{{"family", "model.layers.*.mlp.experts.down_projs"},
                                       {"count", 3},
                                       {"shape", with_experts(n, p.down)},
                                       {"dtype", "BF16"}},
                                      {{"family", "model.layers.*.mlp.experts.gate_and_up_projs"},
                                       {"count", 3},
                                       {"shape", with_experts(n, p.gate_and_up)},
                                       {"dtype", "BF16"}}});
    EXPECT_EQ(j.at("grouped_experts"), grouped);
    EXPECT_EQ(j.at("fp8"), json::array());
    EXPECT_EQ(j.at("problems"), json::array());
  }
}

// The HF source says so, and has no EP placement or grouped tensors.
TEST_P(InspectNative, AnHfFolderIsNamedHf) {
  auto r = run_cli({"inspect", hf()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(r.out, "\nlayout: HF (one tensor per expert)\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "\nexperts: 8 in each of layers 1,2,3 (config: 8)\n")) << r.out;
  EXPECT_FALSE(contains(r.out, "grouped")) << r.out;
  r = run_cli({"inspect", hf(), "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = json::parse(r.out);
  EXPECT_EQ(j.at("layout"), "hf");
  EXPECT_TRUE(j.at("expert_parallel").is_null()) << j.at("expert_parallel");
  EXPECT_EQ(j.at("grouped_experts"), json::array());
  EXPECT_EQ(j.at("experts_per_layer"), (json{{"1", 8}, {"2", 8}, {"3", 8}}));
}

// More ranks than experts: the last ranks hold none (from-hf writes no grouped tensors there).
TEST_P(InspectNative, ARankWithoutExpertsSaysSo) {
  const auto dir = convert(10, 9);
  auto r = run_cli({"inspect", dir});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(
      r.out, "\nlayout: native (grouped experts); EP rank 9 of 10 holds no experts (0 of 8)\n"))
      << r.out;
  EXPECT_FALSE(contains(r.out, "\nexperts:")) << r.out;
  r = run_cli({"inspect", dir, "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = json::parse(r.out);
  EXPECT_EQ(j.at("expert_parallel"), (json{{"recorded", true},
                                           {"ep_size", 10},
                                           {"ep_rank", 9},
                                           {"expert_start", 8},
                                           {"expert_count", 0},
                                           {"disagreements", json::array()}}));
  EXPECT_EQ(j.at("experts_per_layer"), json::object());
  EXPECT_EQ(j.at("grouped_experts"), json::array());
}

// A native folder without moeckpt metadata (saved by other tools) is read as the whole checkpoint;
// one that holds fewer experts than config.json's is told so.
TEST_P(InspectNative, WithoutMetadataTheFolderIsTheWholeCheckpoint) {
  const auto whole = convert(1, 0);
  edit_metadata(whole, erase_ep_metadata);
  auto r = run_cli({"inspect", whole});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_TRUE(contains(
      r.out, "\nlayout: native (grouped experts); no EP metadata: read as the whole checkpoint\n"))
      << r.out;
  EXPECT_FALSE(contains(r.out, "disagrees")) << r.out;
  r = run_cli({"inspect", whole, "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = json::parse(r.out);
  EXPECT_EQ(j.at("expert_parallel"), (json{{"recorded", false}, {"disagreements", json::array()}}));
  EXPECT_EQ(j.at("experts_per_layer"), (json{{"1", 8}, {"2", 8}, {"3", 8}}));

  const auto half = convert(2, 1);
  edit_metadata(half, erase_ep_metadata);
  const std::string line =
      "the grouped expert tensors of layers 1,2,3 hold 4 experts (first dimension) but "
      "config.json's n_routed_experts = 8 (a folder without EP metadata is the whole checkpoint)";
  r = run_cli({"inspect", half});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(contains(r.out, "\n  disagrees: " + line + "\n")) << r.out;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;  // the validation's line
  r = run_cli({"inspect", half, "--json"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  j = json::parse(r.out);
  EXPECT_EQ(j.at("expert_parallel"), (json{{"recorded", false}, {"disagreements", {line}}}));
}

// Metadata that disagrees with the grouped tensors and with config.json's split: both said on
// stdout, the validation's one refusal on stderr; without config.json (headers only, no
// validation) the disagreement itself is the problem.
TEST_P(InspectNative, MetadataThatDisagreesIsSaidClearly) {
  const auto dir = convert(2, 1);
  edit_metadata(dir, [](json& md) { md["moeckpt.expert_count"] = "3"; });
  const std::string count_line =
      "the grouped expert tensors of layers 1,2,3 hold 4 experts (first dimension) but "
      "__metadata__ moeckpt.expert_count = 3";
  const std::string range_line =
      "__metadata__ gives EP rank 1 of 2 experts 4-6, but config.json's 8 experts split over 2 "
      "ranks give it experts 4-7";
  auto r = run_cli({"inspect", dir});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(contains(r.out,
                       "\nlayout: native (grouped experts); EP rank 1 of 2 holds experts 4-6 (3 of "
                       "8)\n  disagrees: " +
                           count_line + "\n  disagrees: " + range_line + "\n"))
      << r.out;
  EXPECT_TRUE(r.err.starts_with("moeckpt: error: ")) << r.err;
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  r = run_cli({"inspect", dir, "--json"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  auto j = json::parse(r.out);
  EXPECT_EQ(j.at("expert_parallel").at("expert_count"), 3);
  EXPECT_EQ(j.at("expert_parallel").at("disagreements"), (json{count_line, range_line}));
  EXPECT_EQ(j.at("experts_per_layer"), (json{{"1", 4}, {"2", 4}, {"3", 4}}));

  fs::remove(fs::path(dir) / "config.json");
  r = run_cli({"inspect", dir, "--headers-only", "--json"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  j = json::parse(r.out);
  EXPECT_EQ(j.at("expert_parallel").at("disagreements"), json{count_line});
  EXPECT_EQ(j.at("problems"),
            json{(fs::path(dir) / "model.safetensors").string() + ": " + count_line});
  r = run_cli({"inspect", dir, "--headers-only"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_TRUE(contains(r.out, "EP rank 1 of 2 holds experts 4-6 (3)\n")) << r.out;
  EXPECT_TRUE(contains(r.out, "(grouped tensors' first dimension; no config.json)\n")) << r.out;
  EXPECT_TRUE(contains(r.err, count_line)) << r.err;
}

INSTANTIATE_TEST_SUITE_P(Presets, InspectNative, ::testing::ValuesIn(kPresets),
                         [](const auto& info) {
                           std::string n = info.param.name;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

}  // namespace
}  // namespace moeckpt
