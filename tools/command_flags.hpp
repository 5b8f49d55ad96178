// How every `troupe` sub-command reads its flags: into the variables `flags` binds them to.
#pragma once

#include <boost/program_options.hpp>
#include <optional>

namespace troupe {

// Parses argv[1..argc) (and positional arguments, when given) and stores them. With --help, prints
// `flags` on stdout and returns nothing: the command then exits 0. Throws boost's errors for bad flags
// (command_error makes them exit 2).
std::optional<boost::program_options::variables_map> parse_flags(
    int argc, char** argv, const boost::program_options::options_description& flags,
    const boost::program_options::positional_options_description* positional = nullptr);

}  // namespace troupe
