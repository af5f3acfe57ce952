#pragma once
// The MiMo tensor-name grammar: what a name is, which layer/expert/projection, its prefix, and
// whether it is a scale companion.
#include <string>
#include <string_view>

#include "moeckpt/tensor_key.hpp"

namespace moeckpt {

TensorKey classify_tensor_name(std::string_view name);

}  // namespace moeckpt
