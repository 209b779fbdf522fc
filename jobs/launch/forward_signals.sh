# shellcheck shell=bash
# Sourced (not run) by jobs/launch/mpirun.sh and jobs/slurm/train.sbatch: run a launcher
# (mpirun or srun) in the background and turn the signals a scheduler sends into the one that
# stops mom cleanly.
#
#   mom_run_forwarding NAME CMD [ARGS...]
#
# runs CMD, waits for it and returns its exit status. While it runs:
#   SIGUSR1, SIGTERM -> SIGUSR1 to CMD. mpirun and srun both pass SIGUSR1 on to every rank
#                       (OpenMPI 4 forwards SIGUSR1/SIGUSR2 by default; srun forwards it to the
#                       step's tasks); each rank finishes its step, a checkpoint is saved and
#                       mom exits with status 75. SIGTERM is not passed on as it is: mpirun and
#                       srun answer SIGTERM by killing the ranks at once.
#   SIGINT           -> SIGINT to CMD: abort without a checkpoint (Ctrl-C).
# NAME prefixes the messages (stderr).

# shellcheck disable=SC2034  # used by the scripts that source this file
MOM_EXIT_STOPPED=75  # mom's exit status after a signal: checkpoint saved, resume to continue

_mom_forward() {  # $1: the signal this shell received
  _mom_signalled=1
  local to=USR1
  [ "$1" = INT ] && to=INT
  if [ -z "$_mom_child" ]; then  # not started yet: mom_run_forwarding sends it after the start
    _mom_pending=$to
    return
  fi
  echo "$_mom_name: got SIG$1; sending SIG$to to the ranks (pid $_mom_child)" >&2
  kill -s "$to" "$_mom_child" 2>/dev/null || true
}

mom_run_forwarding() {
  _mom_name=$1
  shift
  _mom_signalled="" _mom_child="" _mom_pending=""
  trap '_mom_forward USR1' USR1
  trap '_mom_forward TERM' TERM
  trap '_mom_forward INT' INT
  # Background commands of a non-interactive shell start with SIGINT ignored; the launcher
  # installs its own handler, so SIGINT forwarded below still reaches it.
  "$@" &
  _mom_child=$!
  if [ -n "$_mom_pending" ]; then
    echo "$_mom_name: a stop was asked for before the start; sending SIG$_mom_pending" >&2
    kill -s "$_mom_pending" "$_mom_child" 2>/dev/null || true
  fi
  local status
  while :; do
    wait "$_mom_child"
    status=$?
    # A trapped signal cuts `wait` short (status > 128) and its trap runs right after; wait
    # again for the real status (bash keeps the status of a child that has already ended).
    if [ -n "$_mom_signalled" ]; then
      _mom_signalled=""
      continue
    fi
    break
  done
  trap - USR1 TERM INT
  return "$status"
}
