#!/usr/bin/env bash
# A one-node Slurm for the tests marked `slurm`: munge, slurmctld and slurmd as root, with no systemd,
# no cgroups and no slurmdbd (so no sacct: wait with squeue, look with scontrol).
#
#   bash .ci/slurm.sh start   # prints the slurm.conf path on stdout once the node is idle (exit 1 if not)
#   bash .ci/slurm.sh stop    # stops the daemons this script started, by their PIDs
#
# SLURM_DIR (default /tmp/tmafbench-ci-slurm) holds the configuration, state, spool and logs;
# SLURM_PORT (default 6817) is slurmctld's port, slurmd's the next one.
set -euo pipefail
SLURM_DIR=${SLURM_DIR:-/tmp/tmafbench-ci-slurm}
PORT=${SLURM_PORT:-6817}
conf=$SLURM_DIR/slurm.conf

start() {
  rm -rf "$SLURM_DIR"
  mkdir -p "$SLURM_DIR"/{state,spool,log}
  start_munge
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
  # SlurmctldHost and NodeAddr on loopback: the node's name need not resolve. DefMemPerCPU keeps a
  # job from taking all the memory (an array would then run one task at a time).
  cat > "$conf" <<CONF
ClusterName=tmafbench-ci
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=${PORT}
SlurmdPort=$((PORT + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$SLURM_DIR/state
SlurmdSpoolDir=$SLURM_DIR/spool
SlurmctldPidFile=$SLURM_DIR/slurmctld.pid
SlurmdPidFile=$SLURM_DIR/slurmd.pid
SlurmctldLogFile=$SLURM_DIR/log/slurmctld.log
SlurmdLogFile=$SLURM_DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF=$conf
  slurmctld -f "$conf"
  slurmd -f "$conf"
  for _ in $(seq 1 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
      echo "$conf"
      return 0
    fi
    sleep 0.5
  done
  echo "slurm: the node did not become idle within 30 s" >&2
  tail -n 5 "$SLURM_DIR"/log/*.log >&2 || true
  return 1
}

start_munge() {
  # A munged that already answers (the machine's own) is used as it is, and left running.
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  chmod 755 /run/munge  # munged refuses a socket folder that others cannot search
  if [ ! -f /etc/munge/munge.key ]; then
    mungekey --create 2>/dev/null || create-munge-key -f
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  su -s /bin/sh munge -c "munged --pid-file=/run/munge/munged.pid"
  cp /run/munge/munged.pid "$SLURM_DIR/munged.pid"  # ours to stop
}

stop_pid_file() {
  local file=$1 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  rm -f "$file"  # stopped once: a second stop must not signal a PID the system has given to another process
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 40); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.25
  done
  kill -9 "$pid" 2>/dev/null || true
}

stop() {
  stop_pid_file "$SLURM_DIR/slurmd.pid"
  stop_pid_file "$SLURM_DIR/slurmctld.pid"
  stop_pid_file "$SLURM_DIR/munged.pid"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
