// Messages stay one line whatever the names in a file hold.
#include <gtest/gtest.h>

#include "core/printable.hpp"
#include "moeckpt/error.hpp"
#include "test_support.hpp"

namespace moeckpt {
namespace {

TEST(Printable, ControlCharactersAndInvalidUtf8BecomeEscapes) {
  EXPECT_EQ(printable("plain.name_1"), "plain.name_1");
  EXPECT_EQ(printable("a\x1b[2Jb"), "a\\x1b[2Jb");
  EXPECT_EQ(printable("x\r\ny\tz"), "x\\r\\ny\\tz");
  EXPECT_EQ(printable(std::string("nul\0cut", 7)), "nul\\x00cut");
  EXPECT_EQ(printable("del\x7f"), "del\\x7f");
  EXPECT_EQ(printable("\xc3\xa9t\xc3\xa9"), "\xc3\xa9t\xc3\xa9");  // UTF-8 kept
  EXPECT_EQ(printable("\xc2\x85"), "\\xc2\\x85");                  // C1 control (NEL)
  EXPECT_EQ(printable("\xff\xfe"), "\\xff\\xfe");                  // not UTF-8
  EXPECT_EQ(printable("\xe0\x80\x80"), "\\xe0\\x80\\x80");         // overlong
  EXPECT_EQ(printable("\xed\xa0\x80"), "\\xed\\xa0\\x80");         // surrogate
  EXPECT_EQ(printable("\xf0\x9f\x98\x80"), "\xf0\x9f\x98\x80");    // 4-byte kept
}

TEST(Printable, EveryErrorIsOneLine) {
  try {
    fail(ErrorKind::kMalformedFile, "dir/\nfile", std::string("t\r\n\x1b[2J\0x", 9), "what\n",
         "exp\x1b");
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
    EXPECT_EQ(m.find('\r'), std::string::npos) << m;
    EXPECT_EQ(m.find('\x1b'), std::string::npos) << m;
    EXPECT_EQ(m.size(), std::string(m.c_str()).size()) << "a NUL cuts the message";
    EXPECT_EQ(m, "dir/\\nfile: tensor 't\\r\\n\\x1b[2J\\x00x': what\\n (expected exp\\x1b)");
  }
}

TEST(Printable, TheCliPrintsAHostileNameOnOneLine) {
  // A shard whose tensor name holds ESC [2J, CR LF and a NUL, with a header problem to report.
  test::TempDir dir;
  const std::string name = std::string("evil\x1b[2J\r\nmoeckpt: ok\0", 22);
  std::string header = "{\"";
  for (char c : name) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned char>(c));
    header += static_cast<unsigned char>(c) < 0x20 ? std::string(buf) : std::string(1, c);
  }
  header += "\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,3]}}";
  test::write_bytes(dir / "model.safetensors", test::raw_safetensors(header, {1, 2, 3, 4}));
  auto r = test::run_cli({"inspect", dir.path().string(), "--headers-only"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
  EXPECT_EQ(r.err.find('\x1b'), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("evil\\x1b[2J\\r\\nmoeckpt: ok\\x00"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace moeckpt
