#include "tools/command_error.hpp"

#include <boost/program_options/errors.hpp>
#include <cstdio>
#include <exception>

#include "actors/client.hpp"
#include "config/error.hpp"

namespace troupe {

int command_error(const std::string& name, int other) {
  const char* n = name.c_str();
  try {
    throw;
  } catch (const boost::program_options::error& e) {
    std::fprintf(stderr, "troupe %s: %s\n(see troupe %s --help)\n", n, e.what(), n);
    return 2;
  } catch (const ConfigError& e) {
    std::fprintf(stderr, "troupe %s: %s\n", n, e.what());
    return 2;
  } catch (const RequestError& e) {
    std::fprintf(stderr, "troupe %s: %s\n", n, e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "troupe %s: %s\n", n, e.what());
    return other;
  } catch (...) {
    std::fprintf(stderr, "troupe %s: an unknown error\n", n);
    return other;
  }
}

}  // namespace troupe
