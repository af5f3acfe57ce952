#pragma once
// Content checksums of written files (XXH3-128, hex): what --resume trusts a finished shard by.
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace moeckpt::io {

std::string file_checksum(const std::filesystem::path& path);
// Window of own_file_checksum's mapping: what it adds to the resident set at most.
inline constexpr uint64_t kChecksumWindowBytes = 16ull << 20;
// The same checksum, read through a mapping one window at a time (a third of the cost of pread: no
// copy out of the page cache).
// Only for files this process just wrote and still owns (a locked destination): a mapped file
// truncated by someone else meanwhile would raise SIGBUS, so inputs are never read this way.
std::string own_file_checksum(const std::filesystem::path& path);
std::string text_checksum(std::string_view text);

}  // namespace moeckpt::io
