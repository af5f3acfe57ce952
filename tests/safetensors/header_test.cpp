// One case per rule of the safetensors reference (tensor.rs), plus our stricter duplicate rule.
#include <gtest/gtest.h>

#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

using test::raw_safetensors;

Header parse(const std::string& header, const std::vector<uint8_t>& data = {}) {
  auto bytes = raw_safetensors(header, data);
  return Header::parse_file_bytes(bytes, "t.safetensors");
}

void expect_refused(const std::vector<uint8_t>& bytes, const std::string& fragment) {
  try {
    Header::parse_file_bytes(bytes, "t.safetensors");
    FAIL() << "accepted, expected refusal mentioning: " << fragment;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos)
        << "message: " << e.what() << "\nexpected fragment: " << fragment;
    EXPECT_NE(std::string(e.what()).find("t.safetensors"), std::string::npos) << e.what();
  }
}

void expect_refused(const std::string& header, const std::vector<uint8_t>& data,
                    const std::string& fragment) {
  expect_refused(raw_safetensors(header, data), fragment);
}

std::vector<uint8_t> zeros(size_t n) {
  return std::vector<uint8_t>(n, 0);
}

TEST(SafetensorsHeader, AcceptsEmptyPaddedHeader) {
  auto h = parse("{}      ");
  EXPECT_TRUE(h.tensors().empty());
  EXPECT_EQ(h.data_offset(), 16u);
}

TEST(SafetensorsHeader, ParsesTensorsSortedByOffset) {
  auto h = parse(
      R"({"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
      R"("a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"__metadata__":{"format":"pt"}})",
      zeros(12));
  ASSERT_EQ(h.tensors().size(), 2u);
  EXPECT_EQ(h.tensors()[0].name, "a");
  EXPECT_EQ(h.tensors()[1].name, "b");
  EXPECT_EQ(h.find("b")->dtype, Dtype::F32);
  EXPECT_EQ(h.find("b")->numel(), 2u);
  EXPECT_EQ(h.metadata().at("format"), "pt");
  EXPECT_EQ(h.find("zzz"), nullptr);
}

TEST(SafetensorsHeader, AcceptsWhatTheReferenceAccepts) {
  // Scalars, zero-sized tensors sharing an offset, unknown fields, null metadata, whitespace.
  auto h = parse(
      " \n{\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,8],\"extra\":[1,{\"x\":2}]},"
      "\"z1\":{\"dtype\":\"I32\",\"shape\":[0,5],\"data_offsets\":[8,8]},"
      "\"z2\":{\"dtype\":\"U8\",\"shape\":[3,0],\"data_offsets\":[8,8]},"
      "\"__metadata__\":null} \t\r\n",
      zeros(8));
  EXPECT_EQ(h.tensors().size(), 3u);
  EXPECT_TRUE(h.metadata().empty());
}

TEST(SafetensorsHeader, KnowsEveryDtype) {
  const std::pair<const char*, unsigned> dtypes[] = {
      {"BOOL", 8}, {"F4", 4},      {"F6_E2M3", 6}, {"F6_E3M2", 6}, {"U8", 8},
      {"I8", 8},   {"F8_E5M2", 8}, {"F8_E4M3", 8}, {"F8_E8M0", 8}, {"I16", 16},
      {"U16", 16}, {"F16", 16},    {"BF16", 16},   {"I32", 32},    {"U32", 32},
      {"F32", 32}, {"C64", 64},    {"F64", 64},    {"I64", 64},    {"U64", 64}};
  for (auto [name, bits] : dtypes) {
    uint64_t bytes = 8 * bits / 8;  // 8 elements
    auto h = parse(std::string("{\"t\":{\"dtype\":\"") + name +
                       "\",\"shape\":[2,4],\"data_offsets\":[0," + std::to_string(bytes) + "]}}",
                   zeros(bytes));
    EXPECT_EQ(dtype_name(h.find("t")->dtype), name);
    EXPECT_EQ(dtype_bits(h.find("t")->dtype), bits);
  }
}

TEST(SafetensorsHeader, RefusesShortFile) {
  expect_refused(std::vector<uint8_t>(7, 0), "too short");
}

TEST(SafetensorsHeader, RefusesHugeHeaderLength) {
  std::vector<uint8_t> b(16, 0);
  uint64_t n = 100'000'001;
  for (int i = 0; i < 8; ++i) b[static_cast<size_t>(i)] = static_cast<uint8_t>(n >> (8 * i));
  expect_refused(b, "too large");
  std::vector<uint8_t> max(16, 0xFF);
  expect_refused(max, "too large");
}

TEST(SafetensorsHeader, RefusesHeaderPastEndOfFile) {
  auto b = raw_safetensors("{}", {});
  b[0] = 200;
  expect_refused(b, "runs past the end");
}

TEST(SafetensorsHeader, RefusesInvalidUtf8) {
  expect_refused(std::string("{\"a\xff\":1}"), {}, "UTF-8");
  expect_refused(std::string("{\"\xed\xa0\x80\":1}"), {}, "UTF-8");  // surrogate
  expect_refused(std::string("{\"\xc0\xaf\":1}"), {}, "UTF-8");      // overlong
}

TEST(SafetensorsHeader, RefusesNonJson) {
  expect_refused("{\"a\":", {}, "not valid JSON");
  expect_refused("{} x", {}, "not valid JSON");
  expect_refused("{}/*c*/", {}, "not valid JSON");
  expect_refused("[]", {}, "not a JSON object");
  expect_refused("\"s\"", {}, "not a JSON object");
}

TEST(SafetensorsHeader, RefusesDeepNesting) {
  std::string deep = "{\"t\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1],\"x\":" +
                     std::string(200, '[') + std::string(200, ']') + "}}";
  expect_refused(deep, zeros(1), "nested deeper");
}

TEST(SafetensorsHeader, RefusesMetadataThatIsNotAFlatStringMap) {
  expect_refused(R"({"__metadata__":{"a":{"b":"c"}}})", {}, "__metadata__");
  expect_refused(R"({"__metadata__":{"a":1}})", {}, "__metadata__");
  expect_refused(R"({"__metadata__":["a"]})", {}, "__metadata__");
  expect_refused(R"({"__metadata__":"x"})", {}, "__metadata__");
}

TEST(SafetensorsHeader, RefusesUnknownDtype) {
  expect_refused(R"({"t":{"dtype":"F8_E4M3FN","shape":[1],"data_offsets":[0,1]}})", zeros(1),
                 "unknown dtype");
  expect_refused(R"({"t":{"dtype":"f32","shape":[1],"data_offsets":[0,4]}})", zeros(4),
                 "unknown dtype");
  expect_refused(R"({"t":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", zeros(4), "dtype");
}

TEST(SafetensorsHeader, RefusesBadShapesAndOffsets) {
  expect_refused(R"({"t":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", zeros(1),
                 "non-negative integer");
  expect_refused(R"({"t":{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}})", zeros(1),
                 "non-negative integer");
  expect_refused(R"({"t":{"dtype":"U8","shape":[1e0],"data_offsets":[0,1]}})", zeros(1),
                 "non-negative integer");
  expect_refused(R"({"t":{"dtype":"U8","shape":["1"],"data_offsets":[0,1]}})", zeros(1),
                 "non-negative integer");
  expect_refused(R"({"t":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,1]}})",
                 zeros(1), "non-negative integer");
  expect_refused(R"({"t":{"dtype":"U8","shape":1,"data_offsets":[0,1]}})", zeros(1),
                 "not an array");
  expect_refused(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}})", zeros(1),
                 "non-negative integers");
  expect_refused(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1.5]}})", zeros(1),
                 "non-negative integers");
  expect_refused(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}})", zeros(1),
                 "not a pair");
  expect_refused(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", zeros(1), "not a pair");
  expect_refused(R"({"t":{"shape":[1],"data_offsets":[0,1]}})", zeros(1), "no \"dtype\"");
  expect_refused(R"({"t":{"dtype":"U8","data_offsets":[0,1]}})", zeros(1), "no \"shape\"");
  expect_refused(R"({"t":{"dtype":"U8","shape":[1]}})", zeros(1), "no \"data_offsets\"");
  expect_refused(R"({"t":[1,2]})", zeros(1), "not an object");
}

TEST(SafetensorsHeader, RefusesOffsetsThatDoNotTileTheDataArea) {
  // Overlap.
  expect_refused(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                 R"("b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})",
                 zeros(6), "overlap");
  // Hole.
  expect_refused(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                 R"("b":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}})",
                 zeros(8), "hole");
  // Not starting at 0.
  expect_refused(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})", zeros(6), "hole");
  // Reversed.
  expect_refused(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},)"
                 R"("b":{"dtype":"U8","shape":[4],"data_offsets":[4,0]}})",
                 zeros(4), "reversed");
}

TEST(SafetensorsHeader, RefusesSizeMismatch) {
  expect_refused(R"({"t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})", zeros(12),
                 "needs 16");
  expect_refused(R"({"t":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", zeros(2), "sub-byte");
}

TEST(SafetensorsHeader, RefusesSizeOverflowWithCheckedArithmetic) {
  // Element count overflows.
  expect_refused(R"({"t":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", {},
                 "overflows");
  // Count fits but count * 4 bytes wraps to exactly 0 mod 2^64.
  expect_refused(R"({"t":{"dtype":"F32","shape":[2147483648,2147483648],"data_offsets":[0,0]}})",
                 {}, "overflows");
  // moeckpt's rule beyond the reference: no dimension above 2^48, even beside a zero (a
  // [2^64-1, 0] weight would overflow a conversion's offset arithmetic), so that inspect and
  // every conversion refuse the same files.
  expect_refused(R"({"t":{"dtype":"F32","shape":[0,18446744073709551615],"data_offsets":[0,0]}})",
                 {}, "has a dimension larger than any tensor");
  expect_refused(R"({"t":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,0]}})", {},
                 "has a dimension larger than any tensor");
  // A zero dimension makes the product 0 with large others: valid.
  auto h = parse(R"({"t":{"dtype":"F32","shape":[0,281474976710656],"data_offsets":[0,0]}})");
  EXPECT_EQ(h.find("t")->nbytes(), 0u);
}

TEST(SafetensorsHeader, RefusesTrailingBytesAndTruncation) {
  expect_refused(R"({"t":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", zeros(3), "trailing");
  expect_refused(R"({"t":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", zeros(1), "truncated");
  expect_refused(R"({"t":{"dtype":"U8","shape":[1000000000000],)"
                 R"("data_offsets":[0,1000000000000]}})",
                 zeros(1), "truncated");
}

TEST(SafetensorsHeader, RefusesDuplicateNames) {
  expect_refused(R"({"t":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                 R"("t":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                 zeros(2), "duplicate key \"t\"");
  expect_refused(R"({"t":{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}})", zeros(1),
                 "duplicate key");
}

}  // namespace
}  // namespace moeckpt
