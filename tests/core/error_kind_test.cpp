// Every refusal carries a kind beside its message; callers (Python classes, scripts) branch on the
// kind, and each front end spells the options a message suggests. One representative refusal per
// kind, through the library as a user calls it, and the kind of each class of the malformed corpus
// that names its kind unambiguously.
#include <gtest/gtest.h>

#include <atomic>
#include <functional>

#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/inspect.hpp"
#include "moeckpt/synth.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {
namespace fs = std::filesystem;

const fs::path kMalformed = fs::path(MOECKPT_TEST_DATA_DIR) / "malformed";

ErrorKind kind_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.kind();
  }
  ADD_FAILURE() << "no error";
  return ErrorKind::kIo;
}

ErrorKind from_hf_kind(const std::string& malformed_case) {
  test::TempDir out;
  return kind_of([&] { from_hf_dir(kMalformed / malformed_case, out / "o", {}); });
}

TEST(ErrorKind, NamesAreStable) {
  EXPECT_STREQ(error_kind_name(ErrorKind::kMalformedFile), "malformed_file");
  EXPECT_STREQ(error_kind_name(ErrorKind::kConfigMismatch), "config_mismatch");
  EXPECT_STREQ(error_kind_name(ErrorKind::kUnsupportedLayout), "unsupported_layout");
  EXPECT_STREQ(error_kind_name(ErrorKind::kNumeric), "numeric");
  EXPECT_STREQ(error_kind_name(ErrorKind::kDestination), "destination");
  EXPECT_STREQ(error_kind_name(ErrorKind::kInterrupted), "interrupted");
  EXPECT_STREQ(error_kind_name(ErrorKind::kInvalidArgument), "invalid_argument");
  EXPECT_STREQ(error_kind_name(ErrorKind::kIo), "io");
}

// An option a refusal suggests is a tag in the text, spelled by whoever prints the message; what()
// has neutral words. Text from a file is never spelled: a control byte in a path stays escaped.
TEST(ErrorKind, OptionReferencesAreSpelledByTheFrontEnd) {
  const ErrorInfo info{ErrorKind::kDestination,
                       "/d/\x1e"
                       "a\x1f",
                       "", option_ref(CallerOption::kOverwrite) + " cannot be used",
                       "an empty folder, or " + option_ref(CallerOption::kResume) + "; " +
                           option_ref(CallerOption::kMaxMemory, "4096")};
  EXPECT_EQ(std::string(Error(info).what()),
            "/d/\\x1ea\\x1f: the overwrite option cannot be used (expected an empty folder, or "
            "the resume option; the memory budget option at 4096)");
  const OptionSpelling flags = [](CallerOption o, std::string_view value) {
    return std::string(o == CallerOption::kOverwrite ? "--overwrite"
                       : o == CallerOption::kResume  ? "--resume"
                                                     : "--max-memory ") +
           std::string(value);
  };
  EXPECT_EQ(format_error(info, flags),
            "/d/\\x1ea\\x1f: --overwrite cannot be used (expected an empty folder, or --resume; "
            "--max-memory 4096)");
  // A reference cut short, or of no known option, is shown escaped as any control byte is.
  const ErrorInfo broken{ErrorKind::kDestination, "", "",
                         "a \x1e"
                         "z\x1f b \x1e",
                         ""};
  EXPECT_EQ(format_error(broken, flags), "a \\x1ez\\x1f b \\x1e");
}

TEST(ErrorKind, MalformedFiles) {
  for (const char* c : {"header_not_json", "header_not_utf8", "file_too_short", "offsets_overlap",
                        "index_path_traversal", "index_no_weight_map", "config_not_json",
                        "config_missing_hidden_size", "config_block_size_near_int64_max",
                        "unknown_dtype", "scale_wrong_dtype", "duplicate_tensor_name"})
    EXPECT_EQ(from_hf_kind(c), ErrorKind::kMalformedFile) << c;
}

TEST(ErrorKind, TensorsThatDisagreeWithTheConfig) {
  for (const char* c :
       {"weight_shape_disagrees", "config_hidden_size_disagrees", "config_more_layers_than_tensors",
        "missing_q_proj", "missing_whole_expert", "expert_id_out_of_range", "scale_too_few_rows",
        "config_block_size_double", "expert_in_dense_layer"})
    EXPECT_EQ(from_hf_kind(c), ErrorKind::kConfigMismatch) << c;
}

TEST(ErrorKind, NumericRefusals) {
  for (const char* c : {"expert_scale_nan", "expert_scale_zero", "expert_scale_negative",
                        "expert_scale_posinf", "expert_fp8_nan_7f", "attention_fp8_nan_ff",
                        "expert_scale_overflows", "dense_scale_overflows_bf16"})
    EXPECT_EQ(from_hf_kind(c), ErrorKind::kNumeric) << c;
}

TEST(ErrorKind, LayoutsDestinationsArgumentsInputsAndInterruption) {
  EXPECT_EQ(from_hf_kind("native_tensor_in_hf_folder"), ErrorKind::kUnsupportedLayout);
  EXPECT_EQ(from_hf_kind("index_missing_shard"), ErrorKind::kIo);
  EXPECT_EQ(from_hf_kind("config_missing"), ErrorKind::kIo);

  test::TempDir d;
  synthesize_checkpoint(d / "hf", {});
  EXPECT_EQ(kind_of([&] { synthesize_checkpoint(d / "hf", {}); }), ErrorKind::kDestination);
  from_hf_dir(d / "hf", d / "native", {});
  EXPECT_EQ(kind_of([&] { from_hf_dir(d / "hf", d / "native", {}); }), ErrorKind::kDestination);
  EXPECT_EQ(kind_of([&] { from_hf_dir(d / "hf", d / "hf" / "inside", {}); }),
            ErrorKind::kDestination);
  EXPECT_EQ(kind_of([&] { from_hf_dir(d / "native", d / "x", {}); }),
            ErrorKind::kUnsupportedLayout);
  EXPECT_EQ(kind_of([&] { to_hf_dirs({d / "hf"}, d / "y", {}, std::nullopt); }),
            ErrorKind::kUnsupportedLayout);

  FromHfOptions rank;
  rank.ep_size = 2;
  rank.ep_rank = 2;
  EXPECT_EQ(kind_of([&] { from_hf_dir(d / "hf", d / "z", rank); }), ErrorKind::kInvalidArgument);
  EXPECT_EQ(kind_of([&] { from_hf_dir(d / "missing", d / "z", {}); }), ErrorKind::kIo);

  std::atomic<bool> stop{true};
  ConvertOptions c;
  c.exec.cancel = &stop;
  EXPECT_EQ(kind_of([&] { from_hf_dir(d / "hf", d / "w", {}, c); }), ErrorKind::kInterrupted);
  EXPECT_FALSE(fs::exists(d / "w" / "model.safetensors.index.json"));
}

}  // namespace
}  // namespace moeckpt
