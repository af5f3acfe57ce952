#pragma once
// Text from files (tensor names, paths, JSON values) made safe for a one-line message: control
// characters, DEL, C1 controls and bytes that are not UTF-8 become visible escapes, so a name can
// neither forge nor clear lines (ESC [2J, CR LF) nor cut a message short (NUL).
#include <string>
#include <string_view>

namespace moeckpt {

std::string printable(std::string_view text);
// Lines of a report: each line made printable, the line breaks kept (a name holding "\n" stays
// inside its own line, escaped).
std::string printable_lines(std::string_view text);

}  // namespace moeckpt
