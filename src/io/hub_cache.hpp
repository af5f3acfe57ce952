#pragma once
// Checkpoints where users keep them: a folder, or a Hugging Face repo id resolved in the local hub
// cache (nothing is downloaded).
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace moeckpt::io {

// The hub cache folder: $HF_HUB_CACHE, $HUGGINGFACE_HUB_CACHE, $HF_HOME/hub,
// $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub.
std::filesystem::path hub_cache_dir();

// Whether `spec` has the form of a repo id ("ORG/NAME": one slash, no path syntax).
bool looks_like_repo_id(std::string_view spec);

// `spec` itself when it names an existing path (or is not a repo id); otherwise the snapshot
// folder of repo id `spec` at `revision` (default "main": a branch or tag through
// refs/<revision>, or a commit hash naming a snapshot) in the hub cache. A repo id, revision or
// snapshot missing from the cache is an error that says where it looked; a revision given with a
// local folder is an error too.
std::filesystem::path resolve_checkpoint(const std::string& spec,
                                         const std::optional<std::string>& revision = {});

}  // namespace moeckpt::io
