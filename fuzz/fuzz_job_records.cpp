// The records a distributed conversion reads back from its destination (the job record and a
// worker manifest) on arbitrary bytes, through finalize: a forged record is refused with an Error,
// never a crash, a hang or an allocation sized by a forged number. Input: the job record, a NUL
// byte, then worker 0's manifest.
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "job/distributed_records.hpp"
#include "moeckpt/distributed.hpp"
#include "moeckpt/error.hpp"

namespace {

const std::filesystem::path& scratch() {
  static const std::filesystem::path dir = [] {
    char tmpl[] = "/tmp/moeckpt-fuzz-jobs-XXXXXX";
    const char* d = ::mkdtemp(tmpl);
    if (!d) std::abort();
    return std::filesystem::path(d);
  }();
  return dir;
}

void put(const std::filesystem::path& p, std::string_view bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view all(reinterpret_cast<const char*>(data), size);
  const size_t cut = all.find('\0');
  const auto job = all.substr(0, cut);
  const auto manifest = cut == std::string_view::npos ? std::string_view() : all.substr(cut + 1);
  const auto& dir = scratch();
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec))
    std::filesystem::remove_all(e.path(), ec);
  put(dir / moeckpt::kJobFileName, job);
  for (int64_t n : {1, 2}) put(dir / moeckpt::worker_manifest_name(0, n), manifest);
  try {
    (void)moeckpt::JobRecord::load(dir);
  } catch (const moeckpt::Error&) {
  }
  for (int64_t n : {1, 2}) {
    try {
      (void)moeckpt::WorkerManifest::load(dir, 0, n);
    } catch (const moeckpt::Error&) {
    }
  }
  try {
    (void)moeckpt::finalize_dir(dir, std::chrono::milliseconds(0));
  } catch (const moeckpt::Error&) {
  }
  return 0;
}
