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

void fail(std::string file, std::string tensor, std::string what, std::string expected) {
  throw Error(ErrorInfo{std::move(file), std::move(tensor), std::move(what), std::move(expected)});
}

}  // namespace moeckpt
