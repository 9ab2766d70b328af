#!/usr/bin/env bash
# A Slurm cluster on this machine, for the tests of `cnnbench sweep|train --launcher slurm`.
#
#   .ci/slurm-local.sh install   apt-get install slurm-wlm (Debian's; needs root)
#   .ci/slurm-local.sh start     write /etc/slurm/slurm.conf, start munged, slurmctld, a slurmd
#                                per node
#   .ci/slurm-local.sh stop      stop them (munged only if this script started it; the config
#                                stays)
#   .ci/slurm-local.sh status    `scontrol ping` and `sinfo`
#
# $CNNBENCH_SLURM_NODES nodes (default 2), each a slurmd of its own on this host (`slurmd -N
# NAME`, its own port: Debian's build runs several), named cnnbench0, cnnbench1, ... with
# NodeAddr this host, sharing its cores; so a job of `--nodes 2` is a real two-node allocation
# (SLURM_NODEID 0 and 1). One partition `debug`; no cgroups (proctrack/linuxproc, task/none),
# no accounting database. A slurm.conf not written by this script is never overwritten. Logs
# and state in $CNNBENCH_SLURM_DIR (default /var/tmp/cnnbench-slurm).
set -euo pipefail

DIR=${CNNBENCH_SLURM_DIR:-/var/tmp/cnnbench-slurm}
NODES=${CNNBENCH_SLURM_NODES:-2}
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
    local host cpus mem last
    host=$(hostname -s)
    cpus=$(( $(nproc) / NODES > 0 ? $(nproc) / NODES : 1 ))
    mem=$(awk -v n="$NODES" '/MemTotal/ {print int($2 / 1024 * 0.9 / n)}' /proc/meminfo)
    last=$((NODES - 1))
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
SlurmdSpoolDir=$DIR/d/%n
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd-%n.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd-%n.log
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
EOF
    for n in $(seq 0 "$last"); do
        echo "NodeName=cnnbench$n NodeHostname=$host NodeAddr=$host Port=$((6818 + n)) CPUs=$cpus RealMemory=$mem State=UNKNOWN" >> "$CONF"
    done
    cat >> "$CONF" <<EOF
PartitionName=debug Nodes=cnnbench[0-$last] Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
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
    for n in $(seq 0 $((NODES - 1))); do
        pid=$DIR/slurmd-cnnbench$n.pid
        if ! { [ -f "$pid" ] && kill -0 "$(cat "$pid")" 2>/dev/null; }; then
            mkdir -p "$DIR/d/cnnbench$n"
            slurmd -N "cnnbench$n"
        fi
    done
    for _ in $(seq 30); do
        if scontrol ping 2>/dev/null | grep -q UP && [ "$(sinfo -h -N -o %T 2>/dev/null | grep -cE "idle|mix|alloc")" -ge "$NODES" ]; then
            echo "slurm: up on $(hostname -s) ($NODES nodes, partition debug, $(nproc) CPUs); logs in $DIR"
            return
        fi
        sleep 1
    done
    echo "slurm did not come up; see $DIR/slurmctld.log and $DIR/slurmd.log" >&2
    tail -5 "$DIR"/slurmctld.log "$DIR"/slurmd-*.log >&2 || true
    exit 1
}

stop() {
    for pid in "$DIR"/slurmd*.pid "$DIR"/slurmctld.pid; do
        if [ -f "$pid" ]; then
            kill "$(cat "$pid")" 2>/dev/null || true
            rm -f "$pid"
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
