// Each `mom` subcommand registers itself on the CLI11 app; main.cpp only wires them up and
// turns exceptions into exit codes.
#pragma once
#include <CLI/CLI.hpp>

namespace mom::jobs {

void add_data_command(CLI::App& app);
void add_train_command(CLI::App& app);
void add_eval_command(CLI::App& app);
void add_generate_command(CLI::App& app);
void add_ckpt_command(CLI::App& app);
void add_bench_command(CLI::App& app);
void add_convert_command(CLI::App& app);
void add_serve_command(CLI::App& app);
void add_route_command(CLI::App& app);
// dense-to-mom and dense-to-moe, under `convert`.
void add_two_stage_commands(CLI::App& convert);

}  // namespace mom::jobs
