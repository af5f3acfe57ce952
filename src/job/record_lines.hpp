#pragma once
// Record files that grow by one line per finished shard (JSON Lines: one object a line, a header
// object first). Written whole, atomically, when a conversion starts or resumes; then each shard
// appends one short line and syncs it, so recording shard n costs what recording shard 1 did
// (rewriting the whole record per shard made a conversion quadratic in its shard count). Read
// back whole, tolerating a last line cut short: by a crash during its append (the lines before
// were synced), or by an append in progress while another process reads.
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/file.hpp"

namespace moeckpt {

// Whether `text` starts with a one-line JSON object (the record-line format) rather than a record
// written whole as one pretty-printed object (the format before; still read).
bool is_record_lines(std::string_view text);

// The objects of `text`, one per line, the header first. A last line without its newline, or one
// that does not parse, is dropped (an append cut short); any other line that does not parse
// throws an Error naming `file` (kMalformedFile).
std::vector<nlohmann::json> parse_record_lines(std::string_view text, const std::string& file);

// One record line: `record` compact, newline-terminated.
std::string record_line(const nlohmann::ordered_json& record);

// A record file open for appending; not thread-safe (callers hold their own lock).
class RecordAppender {
 public:
  explicit RecordAppender(const std::filesystem::path& path);
  // Appends `record` as one line and syncs it (data and size): it is recorded once this returns.
  void append(const nlohmann::ordered_json& record);

 private:
  io::File file_;
  bool broken_ = false;  // an append failed: the file ends at its last whole line
};

}  // namespace moeckpt
