// A checkpoint folder whose index is fuzzer bytes, next to two valid shards.
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"

namespace {

std::filesystem::path make_dir() {
  auto dir =
      std::filesystem::temp_directory_path() / ("moeckpt-fuzz-index-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  auto shard = [&](const char* file, const std::string& header, size_t data) {
    std::ofstream f(dir / file, std::ios::binary | std::ios::trunc);
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) f.put(static_cast<char>(n >> (8 * i)));
    f << header << std::string(data, '\0');
  };
  shard("a.safetensors", R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
  shard("b.safetensors", R"({"y":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}})", 2);
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto dir = make_dir();
  {
    std::ofstream f(dir / moeckpt::kIndexFileName, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    auto ck = moeckpt::Checkpoint::open(dir);
    for (const auto& n : ck.names()) (void)ck.read_all(*ck.find(n));
  } catch (const moeckpt::Error&) {
  }
  return 0;
}
