// For GPU tests that can hang (a collective waiting for a rank that never comes): when nothing has
// called touch() for `seconds`, every thread's stack goes to stderr and the program ends with exit
// code 3, so the GPU machine's command goes on and the stacks say where it hung. Link with -rdynamic
// for names in the stacks.
#pragma once

namespace troupe::test {

void start_watchdog(double seconds);
// Progress: the watchdog's clock starts again.
void touch();

}  // namespace troupe::test
