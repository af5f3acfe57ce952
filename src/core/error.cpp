#include "moeckpt/error.hpp"

namespace moeckpt {

std::string format_error(const ErrorInfo& info) {
  std::string msg;
  if (!info.file.empty()) msg += info.file + ": ";
  if (!info.tensor.empty()) msg += "tensor '" + info.tensor + "': ";
  msg += info.what;
  if (!info.expected.empty()) msg += " (expected " + info.expected + ")";
  return msg;
}

Error::Error(ErrorInfo info) : std::runtime_error(format_error(info)), info_(std::move(info)) {}

void fail(std::string file, std::string tensor, std::string what, std::string expected) {
  throw Error(ErrorInfo{std::move(file), std::move(tensor), std::move(what), std::move(expected)});
}

}  // namespace moeckpt
