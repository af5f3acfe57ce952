// Which worker writes which output shard of a distributed conversion.
#include <algorithm>

#include "moeckpt/distributed.hpp"
#include "moeckpt/error.hpp"

namespace moeckpt {

void check_worker_count(int64_t count, const std::string& source) {
  if (count < 1 || count > kMaxWorkers)
    fail(ErrorKind::kInvalidArgument, "", "",
         "the number of workers " + std::to_string(count) + " (" + source + ") is out of range",
         "1 to " + std::to_string(kMaxWorkers));
}

std::vector<int64_t> assign_shards(const std::vector<uint64_t>& shard_bytes, int64_t workers) {
  check_worker_count(workers, "workers");
  std::vector<size_t> order(shard_bytes.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return shard_bytes[a] > shard_bytes[b]; });
  // Least loaded worker, lowest index among equals: a linear scan keeps it simple and exact
  // (shards x workers stays small: thousands of shards, hundreds of workers).
  std::vector<uint64_t> load(static_cast<size_t>(workers), 0);
  std::vector<int64_t> owner(shard_bytes.size(), 0);
  for (size_t s : order) {
    size_t best = 0;
    for (size_t w = 1; w < load.size(); ++w)
      if (load[w] < load[best]) best = w;
    owner[s] = static_cast<int64_t>(best);
    load[best] += shard_bytes[s];
  }
  return owner;
}

}  // namespace moeckpt
