// How every `troupe` sub-command ends on an exception: the message as "troupe NAME: what" on
// stderr, and an exit code — 2 for what the user's input caused (a flag boost rejects, with a
// pointer to --help; a ConfigError; a RequestError), `other` for anything else.
#pragma once

#include <string>

namespace troupe {

// Call only inside a catch block: it examines the exception being handled.
int command_error(const std::string& name, int other = 1);

}  // namespace troupe
