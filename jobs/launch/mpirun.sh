#!/usr/bin/env bash
# Starts mom on N MPI ranks with OpenMPI's mpirun, with the flags a run needs here and on a
# cluster node (see docs/slurm.md):
#
#   jobs/launch/mpirun.sh -np N [--ep E] [--bind auto|core|none] [--dry-run] -- <mom args>
#   jobs/launch/mpirun.sh -np 2 --ep 2 -- train --config jobs/configs/moe_tiny_cpu.json
#   jobs/launch/mpirun.sh -np 2 --ep 2 -- serve runs/demo_mom/ckpt_00000040.h5 --port 8080
#
#   -np N, -n N    ranks (default: SLURM_NTASKS inside a Slurm allocation; otherwise required)
#   --ep E         expert-parallel size: adds `--set train.ep_size=E` to the mom arguments
#                  (N must be a multiple of E); for `serve`, `--ep E` (E must equal N)
#   --bind MODE    auto (default): each rank bound to its own core(s) (--map-by slot:PE=C
#                  --bind-to core; C = physical cores / N, or 1 inside Slurm); unbound when
#                  oversubscribed or inside Slurm with --cpus-per-task > 1 (Slurm's cgroup
#                  confines the ranks then); core: always bind; none: never bind
#   --dry-run      print the mpirun command line instead of running it
#   --             the rest are mom's arguments (the first word not starting with '-' also
#                  ends the wrapper's options)
#
# Environment:
#   MOM_BINARY       the mom executable (default: build/mom of this checkout)
#   MOM_MPIRUN       the mpirun executable (default: mpirun)
#   MOM_MPIRUN_ARGS  extra mpirun arguments, split on spaces (e.g. "--mca btl ^openib")
#   OMP_NUM_THREADS  threads per rank; when unset: SLURM_CPUS_PER_TASK inside an allocation
#                    (else 1), otherwise logical CPUs / N, at least 1
#
# Also: --allow-run-as-root when run as root; --oversubscribe when N exceeds the slots (the
# allocation's tasks under Slurm, else this machine's physical cores); OMP_NUM_THREADS and every
# MOM_* variable are exported to the ranks (-x), so remote nodes see them too.
#
# Signals: SIGUSR1 or SIGTERM to this script asks every rank to stop cleanly (SIGUSR1 to
# mpirun, which forwards it): mom finishes the step, saves a checkpoint and exits 75, and so
# does this script (a server drains its requests and exits 0). SIGINT aborts the ranks. The exit status is mpirun's: the first non-zero
# status of a rank, else 0; 2 for bad arguments.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=jobs/launch/forward_signals.sh
source "$here/forward_signals.sh"

usage() {
  sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}
fail_usage() {
  echo "mpirun.sh: $1" >&2
  echo "usage: jobs/launch/mpirun.sh -np N [--ep E] [--bind auto|core|none] [--dry-run] -- <mom args> (--help for more)" >&2
  exit 2
}
positive_int() { [[ $1 =~ ^[1-9][0-9]*$ ]]; }

np="" ep="" bind=auto dry_run=0
while (($#)); do
  case "$1" in
    -np | -n | --np)
      (($# >= 2)) || fail_usage "$1 needs a number of ranks"
      np=$2
      shift 2
      ;;
    --ep)
      (($# >= 2)) || fail_usage "--ep needs the expert-parallel size"
      ep=$2
      shift 2
      ;;
    --bind)
      (($# >= 2)) || fail_usage "--bind needs auto, core or none"
      bind=$2
      shift 2
      ;;
    --dry-run) dry_run=1; shift ;;
    -h | --help) usage; exit 0 ;;
    --) shift; break ;;
    -*) fail_usage "unknown option '$1' (mom's own options go after --)" ;;
    *) break ;;
  esac
done
(($#)) || fail_usage "no mom arguments (e.g. -- train --config CONFIG)"

if [ -z "$np" ]; then
  [ -n "${SLURM_NTASKS:-}" ] || fail_usage "give the number of ranks with -np N"
  np=$SLURM_NTASKS
fi
positive_int "$np" || fail_usage "-np takes a positive whole number, not '$np'"
if [ -n "$ep" ]; then
  positive_int "$ep" || fail_usage "--ep takes a positive whole number, not '$ep'"
  ((np % ep == 0)) || fail_usage "$np ranks do not split into expert-parallel groups of $ep (-np must be a multiple of --ep)"
fi
case "$bind" in auto | core | none) ;; *) fail_usage "--bind takes auto, core or none, not '$bind'" ;; esac

mom="${MOM_BINARY:-$repo/build/mom}"
[ -x "$mom" ] || fail_usage "no mom executable at '$mom' (build it with jobs/setup.sh, or set MOM_BINARY)"
mpirun="${MOM_MPIRUN:-mpirun}"
command -v "$mpirun" >/dev/null || fail_usage "'$mpirun' not found (install openmpi-bin, or set MOM_MPIRUN)"

# Slots mpirun will see, CPUs per rank (threads) and cores per rank (binding).
in_slurm=0
if [ -n "${SLURM_JOB_ID:-}" ] && [ -n "${SLURM_NTASKS:-}" ]; then
  in_slurm=1
  # Inside an allocation: Slurm says how many CPUs each task has (--cpus-per-task).
  slots=$SLURM_NTASKS
  threads=${SLURM_CPUS_PER_TASK:-1}
  cores_per_rank=$threads
else
  logical=$(nproc)
  physical=$(lscpu -p=core,socket 2>/dev/null | grep -v '^#' | sort -u | wc -l)
  ((physical > 0)) || physical=$logical
  slots=$physical
  threads=$((logical / np))
  cores_per_rank=$((physical / np))
fi
((threads >= 1)) || threads=1

args=()
(($(id -u) == 0)) && args+=(--allow-run-as-root)
oversubscribed=0
if ((np > slots)); then
  oversubscribed=1
  args+=(--oversubscribe)
fi
if [ "$bind" = none ] || { [ "$bind" = auto ] && ((oversubscribed || (in_slurm && cores_per_rank > 1))); }; then
  # Unbound when ranks share cores, or when Slurm's cgroup already confines ranks with
  # several CPUs each (its CPUs may be hardware threads, which OpenMPI's PE= does not count).
  args+=(--bind-to none)
elif ((cores_per_rank > 1)); then
  args+=(--map-by "slot:PE=$cores_per_rank" --bind-to core)
else
  args+=(--map-by core --bind-to core)
fi
args+=(-np "$np")

[ -n "${OMP_NUM_THREADS:-}" ] || export OMP_NUM_THREADS=$threads
args+=(-x OMP_NUM_THREADS)
for v in $(compgen -e | grep '^MOM_' || true); do args+=(-x "$v"); done
# shellcheck disable=SC2206  # MOM_MPIRUN_ARGS is split on purpose
extra=(${MOM_MPIRUN_ARGS:-})

mom_args=("$@")
if [ -n "$ep" ]; then
  # A server shards one copy of the model over all its ranks (its own --ep); training splits
  # the ranks into expert-parallel groups (train.ep_size).
  if [ "${mom_args[0]}" = serve ]; then
    ((ep == np)) || fail_usage "mom serve shards one model over all the ranks: --ep must equal -np ($np), not $ep"
    mom_args+=(--ep "$ep")
  else
    mom_args+=(--set "train.ep_size=$ep")
  fi
fi

cmd=("$mpirun" "${args[@]}" "${extra[@]}" "$mom" "${mom_args[@]}")
if ((dry_run)); then
  echo "OMP_NUM_THREADS=$OMP_NUM_THREADS ${cmd[*]}"
  exit 0
fi
echo "mpirun.sh: $np ranks, OMP_NUM_THREADS=$OMP_NUM_THREADS: ${cmd[*]}" >&2
mom_run_forwarding mpirun.sh "${cmd[@]}"
exit $?
