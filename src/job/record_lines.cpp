#include "job/record_lines.hpp"

#include <unistd.h>

#include "core/strict_json.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt {

bool is_record_lines(std::string_view text) {
  const auto end = text.find('\n');
  if (end == std::string_view::npos || end < 2) return false;
  const auto first = text.substr(0, end);
  // The older whole-file records begin "{\n": a first line that is an object on its own is ours.
  return first.front() == '{' && first.back() == '}';
}

std::vector<nlohmann::json> parse_record_lines(std::string_view text, const std::string& file) {
  std::vector<nlohmann::json> out;
  size_t pos = 0;
  while (pos < text.size()) {
    const auto nl = text.find('\n', pos);
    const bool complete = nl != std::string_view::npos;
    const auto line = text.substr(pos, complete ? nl - pos : std::string_view::npos);
    pos = complete ? nl + 1 : text.size();
    if (!complete) break;  // cut short: no newline yet
    // After a power loss a file extended by an unsynced append can end in zeros or a torn line.
    const bool last =
        text.find_first_not_of(std::string_view("\0\n", 2), pos) == std::string_view::npos;
    if (line.empty() && last) break;
    try {
      out.push_back(parse_strict_json(line, file));
    } catch (const Error&) {
      if (last) break;  // the append a crash cut short: that shard is redone
      throw;
    }
    if (last) break;
  }
  return out;
}

std::string record_line(const nlohmann::ordered_json& record) {
  return record.dump() + "\n";
}

RecordAppender::RecordAppender(const std::filesystem::path& path)
    : file_(io::File::open_append(path)) {}

void RecordAppender::append(const nlohmann::ordered_json& record) {
  if (broken_)
    fail(ErrorKind::kDestination, file_.path(), "",
         "an earlier record could not be appended; no further records are written",
         "a destination that accepts writes (then the same command with " +
             option_ref(CallerOption::kResume) + ")");
  const auto line = record_line(record);
  const uint64_t whole = file_.size();  // every line so far is complete
  try {
    file_.append_all({reinterpret_cast<const uint8_t*>(line.data()), line.size()});
    file_.sync_data();
  } catch (const Error&) {
    // A short write (disk full, I/O error) leaves part of a line: cut it off, so that the next
    // reader never finds a torn line in the middle of the file, and append nothing more.
    broken_ = true;
    if (::ftruncate(file_.fd(), static_cast<off_t>(whole)) == 0) (void)::fdatasync(file_.fd());
    throw;
  }
}

}  // namespace moeckpt
