#pragma once
// A user's regular expression over tensor names, matched in linear time (RE2: no backtracking, no
// recursion per character), so a long name or a pathological pattern cannot crash or hang.
#include <memory>
#include <string>
#include <string_view>

namespace re2 {
class RE2;
}

namespace moeckpt {

class KeyPattern {
 public:
  enum class Anchor {
    kSearch,  // found anywhere in the key (std::regex_search, Python re.search)
    kStart,   // matched at the key's start, not necessarily to its end (Python re.match)
  };
  // Throws moeckpt::Error naming the pattern and what is wrong with it (invalid syntax, or a
  // construct a linear-time engine cannot run: lookaround, backreferences).
  KeyPattern(const std::string& pattern, Anchor anchor);
  ~KeyPattern();
  KeyPattern(KeyPattern&&) noexcept;
  KeyPattern& operator=(KeyPattern&&) noexcept;

  bool matches(std::string_view key) const;
  const std::string& pattern() const noexcept { return pattern_; }

 private:
  std::string pattern_;
  Anchor anchor_;
  std::unique_ptr<re2::RE2> re_;
};

}  // namespace moeckpt
