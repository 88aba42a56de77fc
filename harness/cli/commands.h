// Every `kvq` subcommand's entry point: argv[0] is the subcommand name, argv[1..] its options.
// Each returns the process exit status (0 ok, 1 a failed gate, 2 bad input) and may throw
// kvq::Error, which the CLI turns into one line on stderr and exit status 2.
#pragma once

namespace kvq {

int cmd_run(int argc, char** argv);
int cmd_gate(int argc, char** argv);
int cmd_backends(int argc, char** argv);
int cmd_apply(int argc, char** argv);
int cmd_report(int argc, char** argv);
int cmd_bench(int argc, char** argv);
int cmd_synth(int argc, char** argv);
int cmd_record(int argc, char** argv);
int cmd_ppl(int argc, char** argv);
int cmd_merge(int argc, char** argv);
int cmd_sinks(int argc, char** argv);
int cmd_experts(int argc, char** argv);

}  // namespace kvq
