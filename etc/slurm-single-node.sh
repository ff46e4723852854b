#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine, for the Slurm backend's
# tests and for trying it out (as root; Debian's slurm-wlm and munge).
#
#   etc/slurm-single-node.sh install   apt-get install slurm-wlm munge (if missing)
#   etc/slurm-single-node.sh start     write slurm.conf, start munged, slurmctld, slurmd
#   etc/slurm-single-node.sh stop      stop slurmd, slurmctld and munged (by their pid files)
#   etc/slurm-single-node.sh status    sinfo and squeue
#
# State, spool, logs and pid files live in $KREE_SLURM_DIR (default
# /tmp/kree-slurm).  /etc/slurm/slurm.conf is written only when it is absent
# or was written by this script: a real cluster's file is never touched.
# Settings that matter here (see ../shared/NOTES.md): proctrack/linuxproc and
# task/none, because the cgroup plugins do not work in containers; KillWait=5
# so a job over its time limit is killed 5 s after its SIGTERM; no slurmdbd,
# so there is no sacct and finished jobs stay visible for MinJobAge (300 s).
set -euo pipefail

DIR="${KREE_SLURM_DIR:-/tmp/kree-slurm}"
CONF=/etc/slurm/slurm.conf
MARK="# written by kree etc/slurm-single-node.sh"

say() { echo "slurm-single-node: $*"; }

install() {
  if command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then
    return
  fi
  say "installing slurm-wlm and munge"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
  local host cpus
  host="$(hostname -s)"
  cpus="$(nproc)"
  if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    say "$CONF exists and is not ours; using it as it is"
    return
  fi
  mkdir -p /etc/slurm "$DIR/state" "$DIR/spool"
  cat > "$CONF" <<EOF
$MARK
ClusterName=kree
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
KillWait=5
InactiveLimit=0
MinJobAge=300
NodeName=$host CPUs=$cpus RealMemory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 )) State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

alive() {  # alive PIDFILE: the process runs (a zombie that nobody reaped does not count)
  local pid
  [ -s "$1" ] || return 1
  pid="$(cat "$1")"
  [ -r "/proc/$pid/stat" ] || return 1
  ! awk '{ exit ($3 == "Z") ? 0 : 1 }' "/proc/$pid/stat"
}

start() {
  install
  write_conf
  mkdir -p "$DIR/state" "$DIR/spool"
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  # munged answers if munge can encode a credential; pgrep would also see
  # a zombie left by an earlier run.
  if ! munge -n >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 1 20); do munge -n >/dev/null 2>&1 && break; sleep 0.25; done
  fi
  alive "$DIR/slurmctld.pid" || /usr/sbin/slurmctld
  alive "$DIR/slurmd.pid" || /usr/sbin/slurmd
  for _ in $(seq 1 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      say "up: $(sinfo -h -o '%N %T %c cpus')"
      return
    fi
    sleep 0.5
  done
  say "the node did not become idle; the logs are in $DIR"
  sinfo -N -l || true
  tail -n 20 "$DIR/slurmctld.log" "$DIR/slurmd.log" || true
  exit 1
}

stop() {
  for daemon in slurmd slurmctld; do
    if alive "$DIR/$daemon.pid"; then
      kill "$(cat "$DIR/$daemon.pid")"
    fi
  done
  for _ in $(seq 1 40); do
    alive "$DIR/slurmd.pid" || alive "$DIR/slurmctld.pid" || break
    sleep 0.25
  done
  if alive /run/munge/munged.pid; then
    kill "$(cat /run/munge/munged.pid)"
  fi
  say "stopped"
}

case "${1:-}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) sinfo; squeue -t all ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
