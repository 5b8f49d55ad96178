// Rendering a parsed chat template, with Jinja's semantics in transformers' environment
// (ImmutableSandboxedEnvironment, default Undefined, loopcontrols): scoping (a loop iteration's
// assignments stay inside it; namespace() carries state out), loop variables, the filters and tests
// the supported templates use, Python string and dict methods, and the globals transformers adds
// (raise_exception, strftime_now) next to Jinja's (range, namespace, dict).
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/jinja_parser.hpp"
#include "engine/jinja_value.hpp"

namespace troupe::jinja {

bool known_filter(std::string_view name);
bool known_test(std::string_view name);

// Renders `body` with `vars` as the template's variables. Throws TemplateError (with the line) when
// the template raises or fails.
std::string render(const Body& body, const std::vector<std::pair<std::string, Value>>& vars);

}  // namespace troupe::jinja
