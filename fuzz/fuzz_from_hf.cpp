// A whole from-hf of a small checkpoint built from fuzzer bytes: the micro preset's files
// (config.json, the index, four shards) with some of them replaced or deleted by the input, then
// validation (what verify and inspect run), planning and execution into memory in both modes and
// for two EP ranks. Must succeed or throw moeckpt::Error; anything else (a crash, another
// exception type, an allocation past -rss_limit_mb) is a finding.
//
// Input: records [u8 id][u32 little-endian length][bytes]. id & 0x7: the file (mod 6: config.json,
// the index, shard 1..4); id & 0x80: delete that file instead (no length, no bytes). A record
// whose length runs past the end takes the rest of the input.
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "adapter/checkpoint_validation.hpp"
#include "adapter/validate.hpp"
#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/plan.hpp"
#include "moeckpt/safetensors.hpp"
#include "moeckpt/synth.hpp"

namespace {

namespace fs = std::filesystem;

constexpr std::array<const char*, 6> kFiles = {
    "config.json",
    "model.safetensors.index.json",
    "model-00001-of-00004.safetensors",
    "model-00002-of-00004.safetensors",
    "model-00003-of-00004.safetensors",
    "model-00004-of-00004.safetensors",
};

std::vector<uint8_t> slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

struct Workspace {
  fs::path root, dir;
  std::array<std::vector<uint8_t>, kFiles.size()> base;
  // What the case folder holds now (nullopt: absent), so unchanged files are not rewritten.
  std::array<std::optional<std::vector<uint8_t>>, kFiles.size()> current;

  Workspace() {
    root = fs::temp_directory_path() / ("moeckpt-fuzz-from-hf-" + std::to_string(::getpid()));
    fs::remove_all(root);
    moeckpt::SynthOptions o;
    o.preset = "micro";
    o.seed = 1;
    moeckpt::synthesize_checkpoint(root / "base", o);
    for (size_t i = 0; i < kFiles.size(); ++i) {
      base[i] = slurp(root / "base" / kFiles[i]);
      if (base[i].empty()) __builtin_trap();  // the micro preset's layout changed
    }
    dir = root / "case";
    fs::create_directories(dir);
  }

  void put(size_t i, const std::optional<std::vector<uint8_t>>& content) {
    if (current[i] == content) return;
    const fs::path p = dir / kFiles[i];
    if (!content) {
      fs::remove(p);
    } else {
      std::ofstream f(p, std::ios::binary | std::ios::trunc);
      f.write(reinterpret_cast<const char*>(content->data()),
              static_cast<std::streamsize>(content->size()));
    }
    current[i] = content;
  }
};

void convert(const moeckpt::TensorSource& src, const moeckpt::ModelConfig& config,
             const moeckpt::FromHfOptions& o) {
  auto plan = moeckpt::plan_from_hf(src, config, o);
  moeckpt::ExecOptions exec;
  exec.threads = 1;
  moeckpt::MemorySink sink(plan.outputs);
  moeckpt::execute(plan, src, sink, exec);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Workspace ws;
  std::array<std::optional<std::vector<uint8_t>>, kFiles.size()> files;
  for (size_t i = 0; i < kFiles.size(); ++i) files[i] = ws.base[i];
  size_t pos = 0;
  while (pos < size) {
    const uint8_t id = data[pos++];
    const size_t file = (id & 0x7) % kFiles.size();
    if (id & 0x80) {
      files[file].reset();
      continue;
    }
    uint32_t len = 0;
    for (int b = 0; b < 4 && pos < size; ++b) len |= static_cast<uint32_t>(data[pos++]) << (8 * b);
    const size_t n = std::min<size_t>(len, size - pos);
    files[file] = std::vector<uint8_t>(data + pos, data + pos + n);
    pos += n;
  }
  for (size_t i = 0; i < kFiles.size(); ++i) ws.put(i, files[i]);

  try {
    auto config = moeckpt::ModelConfig::load(ws.dir / "config.json");
    moeckpt::CheckpointSource src({ws.dir});
    // verify's and inspect's validation (plan + data scan) ...
    moeckpt::validate_checkpoint(src, config, {true, 1});
  } catch (const moeckpt::Error&) {
  }
  // ... and from-hf in both modes, whole and as EP rank 1 of 2.
  for (auto compat : {moeckpt::Compat::kNone, moeckpt::Compat::kAutomodel07})
    for (int64_t rank : {-1, 1}) {
      try {
        auto config = moeckpt::ModelConfig::load(ws.dir / "config.json");
        moeckpt::CheckpointSource src({ws.dir});
        moeckpt::FromHfOptions o;
        o.compat = compat;
        if (rank >= 0) {
          o.ep_size = 2;
          o.ep_rank = rank;
        }
        convert(src, config, o);
      } catch (const moeckpt::Error&) {
      }
    }
  return 0;
}
