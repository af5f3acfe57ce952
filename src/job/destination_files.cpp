// The destination checks and file rules every folder conversion shares.
#include "job/destination_files.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <optional>
#include <regex>

#include "io/file.hpp"
#include "moeckpt/error.hpp"
#include "moeckpt/safetensors.hpp"

namespace moeckpt {
namespace fs = std::filesystem;

namespace {

std::optional<FileId> file_id(const fs::path& p, bool follow) {
  struct stat st {};
  if ((follow ? ::stat(p.c_str(), &st) : ::lstat(p.c_str(), &st)) != 0) return std::nullopt;
  return std::make_pair(static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino));
}

}  // namespace

bool present(const fs::path& p) {
  std::error_code ec;
  return fs::symlink_status(p, ec).type() != fs::file_type::not_found;
}

void remove_file(const fs::path& p) {
  std::error_code ec;
  fs::remove(p, ec);
  if (ec) fail(ErrorKind::kDestination, p.string(), "", "cannot remove: " + ec.message());
}

void rename_file(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  fs::rename(from, to, ec);
  if (ec)
    fail(ErrorKind::kDestination, to.string(), "",
         "cannot move " + from.string() + " into place: " + ec.message());
}

bool is_shard_name(const std::string& name) {
  static const std::regex shard_name(R"(model(-\d+-of-\d+)?\.safetensors)");
  return std::regex_match(name, shard_name);
}

bool starts_with_bytes(const fs::path& p, const std::vector<uint8_t>& header, uint64_t size) {
  std::error_code ec;
  if (!fs::is_regular_file(fs::symlink_status(p, ec)) || fs::file_size(p, ec) != size || ec)
    return false;
  io::File f = io::File::open_read(p);
  std::vector<uint8_t> got(header.size());
  f.pread_exact(0, got);
  return got == header;
}

bool removable_shard(const fs::path& p, const std::vector<FileId>& inputs) {
  std::error_code ec;
  if (!fs::is_regular_file(fs::symlink_status(p, ec))) return false;  // no links, FIFOs, dirs
  const auto id = file_id(p, false);
  if (!id || std::find(inputs.begin(), inputs.end(), *id) != inputs.end()) return false;
  try {
    (void)SafetensorsFile::open(p);  // a valid safetensors file, not a README under a shard name
  } catch (const Error&) {
    return false;
  }
  return true;
}

Destination take_destination(const fs::path& dst, const std::vector<fs::path>& srcs) {
  Destination d;
  std::error_code ec;
  // The destination may not be a source or lie inside one, whatever path leads there (bind
  // mounts, symlinks, ".."): compared by device and inode, ancestor by ancestor.
  std::vector<std::pair<FileId, fs::path>> src_dirs;
  for (const auto& s : srcs) {
    if (auto id = file_id(s, true)) src_dirs.push_back({*id, s});
    for (const auto& e : fs::directory_iterator(s, ec))
      if (auto id = file_id(e.path(), true)) d.inputs.push_back(*id);
  }
  for (fs::path p = fs::absolute(dst, ec); !p.empty(); p = p.parent_path()) {
    const auto id = file_id(p, true);
    for (const auto& [src_id, src] : src_dirs)
      if (id && *id == src_id)
        fail(ErrorKind::kDestination, dst.string(), "",
             "destination is the source folder or inside it (" + p.string() +
                 " is the same folder as source " + src.string() + ", by device and inode)",
             "a destination outside every source folder");
    if (p == p.root_path()) break;
  }
  if (fs::is_symlink(fs::symlink_status(dst, ec)) && !fs::exists(dst, ec))
    fail(ErrorKind::kDestination, dst.string(), "",
         "destination is a symbolic link to " + fs::read_symlink(dst, ec).string() +
             ", which does not exist",
         "a folder, or a link to an existing folder");
  d.created = fs::create_directories(dst, ec);
  if (ec)
    fail(ErrorKind::kDestination, dst.string(), "", "cannot create directory: " + ec.message());
  if (!fs::is_directory(fs::symlink_status(dst, ec)) && !fs::is_directory(dst, ec))
    fail(ErrorKind::kDestination, dst.string(), "", "destination is not a directory");
  return d;
}

}  // namespace moeckpt
