#include "moeckpt/error.hpp"

#include "core/printable.hpp"

namespace moeckpt {

std::string format_error(const ErrorInfo& info) {
  // Every part may carry text from a file: one line, always.
  std::string msg;
  if (!info.file.empty()) msg += printable(info.file) + ": ";
  if (!info.tensor.empty()) msg += "tensor '" + printable(info.tensor) + "': ";
  msg += printable(info.what);
  if (!info.expected.empty()) msg += " (expected " + printable(info.expected) + ")";
  return msg;
}

Error::Error(ErrorInfo info) : std::runtime_error(format_error(info)), info_(std::move(info)) {}

const char* error_kind_name(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::kMalformedFile:
      return "malformed_file";
    case ErrorKind::kConfigMismatch:
      return "config_mismatch";
    case ErrorKind::kUnsupportedLayout:
      return "unsupported_layout";
    case ErrorKind::kNumeric:
      return "numeric";
    case ErrorKind::kDestination:
      return "destination";
    case ErrorKind::kInterrupted:
      return "interrupted";
    case ErrorKind::kInvalidArgument:
      return "invalid_argument";
    case ErrorKind::kIo:
      return "io";
  }
  return "unknown";
}

void fail(ErrorKind kind, std::string file, std::string tensor, std::string what,
          std::string expected) {
  throw Error(
      ErrorInfo{kind, std::move(file), std::move(tensor), std::move(what), std::move(expected)});
}

}  // namespace moeckpt
