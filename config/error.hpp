#pragma once

#include <stdexcept>

namespace troupe {

// A problem with what the user gave us (a flag, a config file, a model directory): the message is
// meant to be shown as is, and names what to fix.
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace troupe
