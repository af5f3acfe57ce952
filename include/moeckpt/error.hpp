#pragma once
// One error type for every refusal: it names the file, the tensor, what is wrong and what was
// expected, so a user can act on a single line of output.
#include <stdexcept>
#include <string>

namespace moeckpt {

// What kind of problem a refusal is, beside its message: callers (the Python exception classes,
// tests, scripts) branch on this, never on message text.
enum class ErrorKind {
  kMalformedFile,      // a file is not what its format says (header, index, config.json, manifest)
  kConfigMismatch,     // the tensors disagree with config.json or with each other (shapes, sets)
  kUnsupportedLayout,  // a valid checkpoint of a layout this operation does not take
  kNumeric,            // a value is refused: NaN, a non-positive or non-finite scale, overflow
  kDestination,        // the output folder or writing into it (exists, locked, no space, ...)
  kInterrupted,        // stopped on request; finished work is kept for --resume
  kInvalidArgument,    // an option or argument value
  kIo,                 // reading an input failed (cannot open, read error, file changed)
};
// A stable lower-case name ("malformed_file", ...), for messages and bindings.
const char* error_kind_name(ErrorKind kind) noexcept;

struct ErrorInfo {
  ErrorKind kind = ErrorKind::kMalformedFile;
  std::string file;      // path of the offending file, or empty
  std::string tensor;    // tensor name, or empty
  std::string what;      // what is wrong
  std::string expected;  // what was expected, or empty
};

class Error : public std::runtime_error {
 public:
  explicit Error(ErrorInfo info);
  const ErrorInfo& info() const noexcept { return info_; }
  ErrorKind kind() const noexcept { return info_.kind; }

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

[[noreturn]] void fail(ErrorKind kind, std::string file, std::string tensor, std::string what,
                       std::string expected = {});

}  // namespace moeckpt
