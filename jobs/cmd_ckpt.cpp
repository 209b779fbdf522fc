// `mom ckpt inspect`: what a checkpoint holds, readable without h5py.
#include <iostream>
#include <memory>
#include <string>

#include "io/checkpoint_file.h"
#include "jobs/commands.h"

namespace mom::jobs {

void add_ckpt_command(CLI::App& app) {
  CLI::App* ckpt = app.add_subcommand("ckpt", "Checkpoint tools");
  ckpt->require_subcommand(1);
  struct Args {
    std::string path;
    bool verify = false;
  };
  auto args = std::make_shared<Args>();
  CLI::App* inspect = ckpt->add_subcommand("inspect", "List a checkpoint's attributes, config and tensors");
  inspect->add_option("checkpoint", args->path, "Checkpoint (.h5)")->required();
  inspect->add_flag("--verify", args->verify, "Read every tensor to check its checksum");
  inspect->callback([args] { io::inspect_checkpoint(args->path, std::cout, args->verify); });
}

}  // namespace mom::jobs
