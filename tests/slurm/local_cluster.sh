# shellcheck shell=bash
# Sourced (not run): a one-node Slurm cluster in a scratch folder, as
# ../shared/spec/SLURM-LOCAL.md describes (Debian's slurm-wlm and munge, run as root).
#
#   slurm_missing                  prints why the cluster cannot run here (nothing: it can)
#   slurm_start DIR [SECONDS]      munged (unless one answers already), slurm.conf in DIR,
#                                  slurmctld and slurmd; exports SLURM_CONF; waits for the node.
#                                  SECONDS: AuthInfo=cred_expire, the credential lifetime that
#                                  is also how long a requeued job waits (Slurm's default: 120)
#   slurm_stop                     cancels jobs, stops the daemons by their pid files, ends the
#                                  slurmstepd processes our slurmd started, and munged if ours
#
# The daemons carry MOM_SLURM_CLUSTER=DIR in their environment, which their slurmstepd
# children inherit (submit jobs with it too, so that batch shells and ranks carry it): that is
# how slurm_stop tells its own processes from anybody else's.

slurm_log() { echo "[slurm $(date +%T)] $*" >&2; }

slurm_missing() {
  local c
  for c in munged munge slurmctld slurmd sbatch squeue scontrol scancel sinfo srun; do
    command -v "$c" >/dev/null || { echo "'$c' not found (apt-get install slurm-wlm munge, or bash jobs/setup.sh)"; return; }
  done
  [ "$(id -u)" -eq 0 ] || { echo "the local Slurm cluster runs its daemons as root; this is uid $(id -u)"; return; }
  if [ ! -f /etc/munge/munge.key ] && ! getent passwd munge >/dev/null; then
    echo "no munge user and no /etc/munge/munge.key (reinstall the munge package)"
  fi
}

_slurm_pid_alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# Ends PID: SIGTERM, up to 10 s, then SIGKILL.
_slurm_end_pid() {
  local pid=$1
  _slurm_pid_alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 100); do
    _slurm_pid_alive "$pid" || return 0
    sleep 0.1
  done
  slurm_log "pid $pid ignored SIGTERM for 10 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null
}

# The pids of processes whose environment holds MOM_SLURM_CLUSTER=$SLURM_CLUSTER_DIR.
_slurm_own_pids() {
  local f pid
  for f in /proc/[0-9]*/environ; do
    pid=${f#/proc/}
    pid=${pid%/environ}
    grep -qzxF "MOM_SLURM_CLUSTER=$SLURM_CLUSTER_DIR" "$f" 2>/dev/null && echo "$pid"
  done
}

_slurm_start_munge() {
  SLURM_OWN_MUNGED=""
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    slurm_log "munged already answers: using it"
    return 0
  fi
  if [ ! -f /etc/munge/munge.key ]; then
    slurm_log "creating /etc/munge/munge.key (1024 random bytes)"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge  # /run is a tmpfs: the package's folder is gone after a reboot
  chown munge:munge /run/munge
  chmod 755 /run/munge
  # As root (--force: it warns that root owns its log); the warning goes to DIR/munged.err.
  munged --force 2>>"$SLURM_CLUSTER_DIR/munged.err" || return 1
  for _ in $(seq 50); do
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.1
  done
  SLURM_OWN_MUNGED=$(cat /run/munge/munged.pid 2>/dev/null)
  slurm_log "started munged (pid ${SLURM_OWN_MUNGED:-?})"
}

slurm_start() {
  local dir=$1 cred_expire=${2:-} host mem_mb
  SLURM_CLUSTER_DIR=$dir
  mkdir -p "$dir/state" "$dir/spool"
  _slurm_start_munge || { slurm_log "munged did not start"; return 1; }
  host=$(hostname -s)
  # The spec's 20000 MB, or less on a smaller machine (slurmd refuses a node that claims more).
  mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  ((mem_mb > 20000)) && mem_mb=20000
  cat >"$dir/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/ctld.log
SlurmdLogFile=$dir/d.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
NodeName=$host CPUs=2 RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  [ -n "$cred_expire" ] && echo "AuthInfo=cred_expire=$cred_expire" >>"$dir/slurm.conf"
  export SLURM_CONF=$dir/slurm.conf
  MOM_SLURM_CLUSTER=$dir slurmctld -f "$SLURM_CONF" || { slurm_log "slurmctld did not start (see $dir/ctld.log)"; return 1; }
  MOM_SLURM_CLUSTER=$dir slurmd -f "$SLURM_CONF" || { slurm_log "slurmd did not start (see $dir/d.log)"; return 1; }
  local state
  for _ in $(seq 60); do
    state=$(sinfo -h -o %T 2>/dev/null)
    [ "$state" = idle ] && { slurm_log "node $host idle (slurm.conf: $SLURM_CONF)"; return 0; }
    sleep 0.5
  done
  slurm_log "the node did not become idle in 30 s (state '$state'); logs:"
  tail -n 20 "$dir/ctld.log" "$dir/d.log" >&2
  return 1
}

slurm_stop() {
  [ -n "${SLURM_CLUSTER_DIR:-}" ] || return 0
  local pid
  if [ -f "$SLURM_CLUSTER_DIR/slurmctld.pid" ]; then
    local jobs
    jobs=$(squeue -h -o %i 2>/dev/null)
    # shellcheck disable=SC2086  # one id a word
    [ -n "$jobs" ] && scancel $jobs 2>/dev/null
    for _ in $(seq 100); do  # let slurmd end the job steps itself (up to 10 s)
      [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
  _slurm_end_pid "$(cat "$SLURM_CLUSTER_DIR/slurmd.pid" 2>/dev/null)"
  _slurm_end_pid "$(cat "$SLURM_CLUSTER_DIR/slurmctld.pid" 2>/dev/null)"
  for pid in $(_slurm_own_pids); do
    slurm_log "ending leftover $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) (pid $pid)"
    _slurm_end_pid "$pid"
  done
  if [ -n "${SLURM_OWN_MUNGED:-}" ]; then
    _slurm_end_pid "$SLURM_OWN_MUNGED"
    SLURM_OWN_MUNGED=""
  fi
  SLURM_CLUSTER_DIR=""
}
