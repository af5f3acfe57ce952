#pragma once
// The job layer (src/job/): output folders that are never half-written under a final name, their
// manifests and locks, the records of a distributed conversion's workers and its finalization.
// It writes planned shards and knows no checkpoint family and no planner.
#include <cstdint>

namespace moeckpt {

// What a folder conversion does when its destination already holds a checkpoint or the
// remains of a killed conversion (its manifest).
enum class ExistingOutput {
  kRefuse,     // either one is an error
  kOverwrite,  // both are removed first
  kResume,     // an unfinished conversion of the same inputs and options is continued: its
               // verified shards are kept; with nothing unfinished, a fresh start
};

}  // namespace moeckpt
