// Each `mom` subcommand registers itself on the CLI11 app; main.cpp only wires them up and
// turns exceptions into exit codes.
#pragma once
#include <CLI/CLI.hpp>
#include <string>

namespace mom::jobs {

// --device for the commands that run a checkpoint (eval, route, generate, serve). Why not the
// checkpoint's train.device: checkpoints move freely between CPU and GPU runs, so where one is
// run is the caller's choice, "cpu" unless asked.
inline void add_device_option(CLI::App* cmd, std::string& device) {
  cmd->add_option("--device", device, "Where to run the model: cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
}

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
