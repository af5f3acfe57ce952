#pragma once
// One error type for every refusal: it names the file, the tensor, what is wrong and what was
// expected, so a user can act on a single line of output.
#include <stdexcept>
#include <string>

namespace moeckpt {

struct ErrorInfo {
  std::string file;      // path of the offending file, or empty
  std::string tensor;    // tensor name, or empty
  std::string what;      // what is wrong
  std::string expected;  // what was expected, or empty
};

class Error : public std::runtime_error {
 public:
  explicit Error(ErrorInfo info);
  const ErrorInfo& info() const noexcept { return info_; }

 private:
  ErrorInfo info_;
};

// A run stopped on request (ExecOptions::cancel, set by SIGINT/SIGTERM in the CLI): finished work
// is kept so that it can be resumed.
class Interrupted : public Error {
 public:
  using Error::Error;
};

// Builds the one-line message: "<file>: tensor '<t>': <what> (expected <e>)".
std::string format_error(const ErrorInfo& info);

[[noreturn]] void fail(std::string file, std::string tensor, std::string what,
                       std::string expected = {});

}  // namespace moeckpt
