#include "io/hub_cache.hpp"

#include <cstdlib>

#include "io/file.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt::io {
namespace fs = std::filesystem;

namespace {

std::optional<std::string> env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) return std::nullopt;
  return std::string(v);
}

bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '_' || c == '.';
}

// A name part of a repo id: the hub's characters, not "." or ".." or starting with one.
bool is_name(std::string_view s) {
  if (s.empty() || s.size() > 96 || s.front() == '.' || s.front() == '-') return false;
  for (char c : s)
    if (!is_name_char(c)) return false;
  return true;
}

bool is_commit_hash(std::string_view s) {
  if (s.size() != 40) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

// A revision names a file under refs/ (branches, tags, "refs/pr/N" style): no escaping it.
bool is_safe_revision(std::string_view r) {
  if (r.empty() || r.front() == '/' || r.size() > 255) return false;
  size_t start = 0;
  while (start <= r.size()) {
    const size_t end = std::min(r.find('/', start), r.size());
    const auto part = r.substr(start, end - start);
    if (part.empty() || part == "." || part == "..") return false;
    start = end + 1;
  }
  for (char c : r)
    if (static_cast<unsigned char>(c) < 0x20 || c == '\\') return false;
  return true;
}

}  // namespace

fs::path hub_cache_dir() {
  if (auto v = env("HF_HUB_CACHE")) return *v;
  if (auto v = env("HUGGINGFACE_HUB_CACHE")) return *v;
  if (auto v = env("HF_HOME")) return fs::path(*v) / "hub";
  if (auto v = env("XDG_CACHE_HOME")) return fs::path(*v) / "huggingface" / "hub";
  if (auto v = env("HOME")) return fs::path(*v) / ".cache" / "huggingface" / "hub";
  return fs::path(".cache") / "huggingface" / "hub";
}

bool looks_like_repo_id(std::string_view spec) {
  const size_t slash = spec.find('/');
  if (slash == std::string_view::npos || spec.find('/', slash + 1) != std::string_view::npos)
    return false;
  return is_name(spec.substr(0, slash)) && is_name(spec.substr(slash + 1));
}

fs::path resolve_checkpoint(const std::string& spec, const std::optional<std::string>& revision) {
  std::error_code ec;
  const bool exists = fs::exists(fs::symlink_status(spec, ec));
  if (exists || !looks_like_repo_id(spec)) {
    if (revision)
      fail(ErrorKind::kInvalidArgument, spec, "",
           "a revision (" + *revision + ") applies to a Hugging Face repo id only",
           "a repo id such as ORG/NAME, or no revision for a local folder");
    return spec;
  }
  const fs::path cache = hub_cache_dir();
  const size_t slash = spec.find('/');
  const fs::path repo =
      cache / ("models--" + spec.substr(0, slash) + "--" + spec.substr(slash + 1));
  if (!fs::is_directory(repo, ec))
    fail(ErrorKind::kInvalidArgument, spec, "",
         "is neither a folder nor a repo id in the local Hugging Face cache (looked for " +
             repo.string() + "; nothing is downloaded)",
         "a checkpoint folder, or a repo downloaded into $HF_HUB_CACHE / $HF_HOME/hub");
  const std::string rev = revision.value_or("main");
  if (!is_safe_revision(rev))
    fail(ErrorKind::kInvalidArgument, spec, "",
         "revision \"" + rev + "\" is not a branch, tag or commit name",
         "a name such as main, v1.0 or a 40-hex commit");
  std::string commit;
  const fs::path ref = repo / "refs" / rev;
  if (fs::is_regular_file(ref, ec)) {
    commit = read_small_file(ref, 4096);
    while (!commit.empty() &&
           (commit.back() == '\n' || commit.back() == '\r' || commit.back() == ' '))
      commit.pop_back();
    if (!is_commit_hash(commit))
      fail(ErrorKind::kInvalidArgument, ref.string(), "", "does not hold a commit hash",
           "40 hexadecimal digits");
  } else if (is_commit_hash(rev)) {
    commit = rev;
  } else {
    fail(ErrorKind::kInvalidArgument, spec, "",
         "revision \"" + rev + "\" is not in the local Hugging Face cache (looked for " +
             ref.string() + ")",
         "a revision that was downloaded (see " + (repo / "refs").string() + ")");
  }
  const fs::path snapshot = repo / "snapshots" / commit;
  if (!fs::is_directory(snapshot, ec))
    fail(ErrorKind::kInvalidArgument, spec, "",
         "revision \"" + rev + "\" (commit " + commit +
             ") has no snapshot in the local Hugging Face cache (looked for " + snapshot.string() +
             ")",
         "the snapshot folder of a downloaded revision");
  return snapshot;
}

}  // namespace moeckpt::io
