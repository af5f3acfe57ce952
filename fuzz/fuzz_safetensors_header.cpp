// Whole-file header parsing and validation on arbitrary bytes: must refuse or accept, never crash.
#include <cstdint>
#include <span>

#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    auto h = moeckpt::Header::parse_file_bytes(std::span(data, size), "fuzz.safetensors");
    // An accepted header must describe tensors that lie inside the data area.
    for (const auto& t : h.tensors())
      if (t.end > h.data_size() || t.begin > t.end) __builtin_trap();
  } catch (const moeckpt::Error&) {
  }
  return 0;
}
