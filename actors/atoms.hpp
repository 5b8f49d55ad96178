// The message kinds of troupe's actors (CAF 0.17 atoms, at most 10 characters). Included only by
// actors/*.cpp: CAF's headers stay out of the rest of the code base.
#pragma once

#include <caf/all.hpp>

namespace troupe::atoms {

using admit = caf::atom_constant<caf::atom("admit")>;
using allocate = caf::atom_constant<caf::atom("allocate")>;
using abort = caf::atom_constant<caf::atom("abort")>;
using commit = caf::atom_constant<caf::atom("commit")>;
using done = caf::atom_constant<caf::atom("done")>;
using fail = caf::atom_constant<caf::atom("fail")>;
using free = caf::atom_constant<caf::atom("free")>;
using load = caf::atom_constant<caf::atom("load")>;
using observe = caf::atom_constant<caf::atom("observe")>;
using plan = caf::atom_constant<caf::atom("plan")>;
using ready = caf::atom_constant<caf::atom("ready")>;
using reset = caf::atom_constant<caf::atom("reset")>;
using routing = caf::atom_constant<caf::atom("routing")>;
using run = caf::atom_constant<caf::atom("run")>;
using snapshot = caf::atom_constant<caf::atom("snapshot")>;
using stats = caf::atom_constant<caf::atom("stats")>;
using step = caf::atom_constant<caf::atom("step")>;
using submit = caf::atom_constant<caf::atom("submit")>;
using update = caf::atom_constant<caf::atom("update")>;
using finished = caf::atom_constant<caf::atom("finished")>;

}  // namespace troupe::atoms
