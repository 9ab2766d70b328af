#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the tests of `cnnbench sweep --launcher slurm`.
#
#   .ci/slurm-local.sh install   apt-get install slurm-wlm (Debian's; needs root)
#   .ci/slurm-local.sh start     write /etc/slurm/slurm.conf, start munged, slurmctld, slurmd
#   .ci/slurm-local.sh stop      stop them (munged only if this script started it; the config
#                                stays)
#   .ci/slurm-local.sh status    `scontrol ping` and `sinfo`
#
# The node is this host with all its cores, one partition `debug`; no cgroups
# (proctrack/linuxproc, task/none), no accounting database. A slurm.conf not written by this
# script is never overwritten. Logs and state in $CNNBENCH_SLURM_DIR (default
# /var/tmp/cnnbench-slurm).
set -euo pipefail

DIR=${CNNBENCH_SLURM_DIR:-/var/tmp/cnnbench-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by cnnbench .ci/slurm-local.sh"

install() {
    if command -v slurmctld >/dev/null && command -v sbatch >/dev/null; then return; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm >/dev/null 2>&1 || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm >/dev/null
    }
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        echo "$CONF exists and was not written by this script: not touching it" >&2
        exit 1
    fi
    mkdir -p /etc/slurm "$DIR/ctld" "$DIR/d"
    cat > "$CONF" <<EOF
$MARK
ClusterName=cnnbench
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/ctld
SlurmdSpoolDir=$DIR/d
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
KillWait=30
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=30
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start() {
    install
    write_conf
    if [ ! -s /etc/munge/munge.key ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
        chown munge:munge /etc/munge/munge.key 2>/dev/null || true
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
    if ! pgrep -x munged >/dev/null; then
        su -s /bin/sh munge -c "munged" 2>/dev/null || munged --force
        touch "$DIR/munged.ours"  # stop stops only a munged it started
    fi
    pgrep -x slurmctld >/dev/null || slurmctld
    pgrep -x slurmd >/dev/null || slurmd
    for _ in $(seq 30); do
        if scontrol ping 2>/dev/null | grep -q UP && sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc"; then
            echo "slurm: up on $(hostname -s) (partition debug, $(nproc) CPUs); logs in $DIR"
            return
        fi
        sleep 1
    done
    echo "slurm did not come up; see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
    tail -5 "$DIR/slurmctld.log" "$DIR/slurmd.log" >&2 || true
    exit 1
}

stop() {
    for daemon in slurmd slurmctld; do
        if [ -f "$DIR/$daemon.pid" ]; then
            kill "$(cat "$DIR/$daemon.pid")" 2>/dev/null || true
            rm -f "$DIR/$daemon.pid"
        fi
    done
    if [ -f "$DIR/munged.ours" ] && [ -f /run/munge/munged.pid ]; then
        kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
        rm -f "$DIR/munged.ours"
    fi
    echo "slurm: stopped"
}

status() {
    scontrol ping
    sinfo
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
