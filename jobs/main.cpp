// mom: the one command line for data preparation, training, evaluation, sampling and
// checkpoint inspection. Exit status: 0 success, 1 usage error, 2 a user-caused error
// (bad config, missing or corrupt file; the message says what and how to fix it), 3 a bug,
// 75 a training run stopped by SIGUSR1/SIGTERM after saving its checkpoint (resume it).
#include <cstdio>
#include <exception>
#include <string>

#include "core/error.h"
#include "jobs/commands.h"

int main(int argc, char** argv) {
  // Only the devices this build can run on (core/backend/registry.cpp).
#ifdef MOM_HAVE_CUDA
  const char* devices = "on CPU and CUDA GPUs";
#else
  const char* devices = "on CPU (this build has no CUDA backend)";
#endif
  CLI::App app{std::string("mom: train modular transformers (dense GPT-2, MoM, MoE, SAS, AltUp) ") + devices, "mom"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "mom 0.1.0");
  mom::jobs::add_data_command(app);
  mom::jobs::add_train_command(app);
  mom::jobs::add_eval_command(app);
  mom::jobs::add_generate_command(app);
  mom::jobs::add_ckpt_command(app);
  mom::jobs::add_bench_command(app);
  mom::jobs::add_convert_command(app);
  mom::jobs::add_serve_command(app);
  mom::jobs::add_route_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const mom::ExitStatus& e) {
    return e.code;
  } catch (const mom::UserError& e) {
    std::fprintf(stderr, "mom: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mom: internal error: %s\n", e.what());
    return 3;
  }
  return 0;
}
