#pragma once
// Content checksums of written files (XXH3-128, hex): what --resume trusts a finished shard by.
#include <filesystem>
#include <string>
#include <string_view>

namespace moeckpt::io {

std::string file_checksum(const std::filesystem::path& path);
std::string text_checksum(std::string_view text);

}  // namespace moeckpt::io
