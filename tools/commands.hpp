// The sub-commands of `troupe`. Each takes the arguments after its name and returns the exit code:
// 0 on success, 2 for a usage error (bad flag or value, named in the message), 1 for other failures.
#pragma once

namespace troupe {

int make_model_command(int argc, char** argv);
int generate_command(int argc, char** argv);
int tokenize_command(int argc, char** argv);
int bench_command(int argc, char** argv);
int serve_command(int argc, char** argv);
int plan_command(int argc, char** argv);
int sweep_command(int argc, char** argv);
int advise_command(int argc, char** argv);

}  // namespace troupe
