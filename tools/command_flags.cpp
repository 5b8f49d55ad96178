#include "tools/command_flags.hpp"

#include <iostream>

namespace troupe {

namespace po = boost::program_options;

std::optional<po::variables_map> parse_flags(int argc, char** argv, const po::options_description& flags,
                                             const po::positional_options_description* positional) {
  po::command_line_parser parser(argc, argv);
  parser.options(flags);
  if (positional) parser.positional(*positional);
  po::variables_map vm;
  po::store(parser.run(), vm);
  if (vm.count("help")) {
    std::cout << flags << "\n";
    return std::nullopt;
  }
  po::notify(vm);
  return vm;
}

}  // namespace troupe
