#include "moeckpt/adapter.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt {

ExpertRange ExpertRange::for_rank(int64_t n, int64_t w, int64_t r) {
  if (w < 1)
    fail(ErrorKind::kInvalidArgument, "", "", "EP size " + std::to_string(w) + " is not positive");
  if (r < 0 || r >= w)
    fail(ErrorKind::kInvalidArgument, "", "",
         "EP rank " + std::to_string(r) + " is outside [0, " + std::to_string(w) + ")");
  const int64_t q = n / w, rem = n % w;
  return r < rem ? ExpertRange{r * (q + 1), q + 1} : ExpertRange{r * q + rem, q};
}

}  // namespace moeckpt
