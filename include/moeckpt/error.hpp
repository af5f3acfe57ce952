#pragma once
// One error type for every refusal: it names the file, the tensor, what is wrong and what was
// expected, so a user can act on a single line of output.
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

namespace moeckpt {

// What kind of problem a refusal is, beside its message: callers (the Python exception classes,
// tests, scripts) branch on this, never on message text.
enum class ErrorKind {
  kMalformedFile,      // a file is not what its format says (header, index, config.json, manifest)
  kConfigMismatch,     // the tensors disagree with config.json or with each other (shapes, sets)
  kUnsupportedLayout,  // a valid checkpoint of a layout this operation does not take
  kNumeric,            // a value is refused: NaN, a non-positive or non-finite scale, overflow
  kDestination,        // the output folder or writing into it (exists, locked, no space, ...)
  kInterrupted,        // stopped on request; finished work is kept for a resume
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

// An option of the caller's interface that a refusal suggests ("or overwrite to replace it").
// The library names it by tag, never in one interface's words: each front end spells it when it
// formats the message (the CLI "--overwrite", Python "overwrite=True").
enum class CallerOption : uint8_t {
  kOverwrite,    // replace what the destination holds
  kResume,       // continue an unfinished conversion
  kMaxMemory,    // the memory budget; its value in bytes
  kDistributed,  // run as one worker of a conversion spread over processes
  kWorkers,      // an explicit worker count and index, instead of a launcher's
  kWait,         // how long to wait for the other workers; its value in seconds
};
// Stands for `option` (with the `value` the suggestion gives, if any) in an ErrorInfo's `what` or
// `expected`; format_error spells it.
std::string option_ref(CallerOption option, std::string_view value = {});
// A front end's words for an option suggestion (`value` empty when none is given).
using OptionSpelling = std::string (*)(CallerOption option, std::string_view value);
// The library's own, interface-neutral words ("the overwrite option"): what() uses them.
std::string neutral_spelling(CallerOption option, std::string_view value);

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

// Builds the one-line message: "<file>: tensor '<t>': <what> (expected <e>)", the option
// references in <what> and <e> in `spell`'s words.
std::string format_error(const ErrorInfo& info, OptionSpelling spell = neutral_spelling);

[[noreturn]] void fail(ErrorKind kind, std::string file, std::string tensor, std::string what,
                       std::string expected = {});

}  // namespace moeckpt
