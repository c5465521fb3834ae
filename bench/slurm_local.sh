#!/usr/bin/env bash
# A one-node Slurm on this machine, for CI and for trying `--executor slurm` (docs/executors.md).
#
#   bench/slurm_local.sh start    install (Debian: slurm-wlm, munge) if missing, write
#                                 /etc/slurm/slurm.conf for this machine, start munged, slurmctld
#                                 and slurmd; waits until `sinfo` answers with the node idle
#   bench/slurm_local.sh status   sinfo (exit 1 when no controller answers)
#   bench/slurm_local.sh stop     stop the three daemons (the configuration and state stay)
#
# Run as root. Idempotent: `start` on a running cluster only checks it. No cgroups (containers
# rarely allow them: proctrack/linuxproc, task/none), no accounting (accounting_storage/none:
# `sacct` has nothing; the harness says so once), one partition `debug` holding this node with its
# real CPU count and memory. Spool and state live under /var/spool, logs under /var/log/slurm.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
SPOOL=/var/spool/slurmd
STATE=/var/spool/slurmctld
LOGS=/var/log/slurm
RUN=/run/slurm

die() { echo "slurm_local: $*" >&2; exit 1; }

answers() { timeout 5 sinfo -h -o %T >/dev/null 2>&1; }

pid_of() {  # the pid in a pid file when that process is alive
    local file=$1 pid
    [[ -r $file ]] || return 1
    pid=$(<"$file")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

install_packages() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
    [[ $(id -u) == 0 ]] || die "slurm-wlm and munge are not installed; run as root to install them"
    echo "slurm_local: installing slurm-wlm and munge (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_conf() {
    local host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc --all)
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
    mem_mb=$((mem_mb * 95 / 100))  # slurmd refuses a node whose RealMemory exceeds what it sees
    mkdir -p /etc/slurm "$SPOOL" "$STATE" "$LOGS" "$RUN"
    local tmp
    tmp=$(mktemp /etc/slurm/.slurm.conf.XXXXXX)
    cat >"$tmp" <<EOF
# Written by attnbench bench/slurm_local.sh: a one-node cluster on $host, no cgroups, no accounting.
ClusterName=attnbench
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=60
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmdSpoolDir=$SPOOL
StateSaveLocation=$STATE
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    chmod 644 "$tmp"
    mv "$tmp" "$CONF"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
        chown munge:munge /etc/munge/munge.key
        chmod 0400 /etc/munge/munge.key
    fi
    runuser -u munge -- /usr/sbin/munged --force
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munged did not start (see /var/log/munge/munged.log)"
}

start() {
    install_packages
    if [[ -f $CONF ]] && answers && pid_of "$RUN/slurmd.pid" >/dev/null; then
        echo "slurm_local: already running"
        status
        return 0
    fi
    write_conf
    start_munge
    pid_of "$RUN/slurmctld.pid" >/dev/null || /usr/sbin/slurmctld -i
    pid_of "$RUN/slurmd.pid" >/dev/null || /usr/sbin/slurmd
    local state=""
    for _ in $(seq 60); do
        state=$(timeout 5 sinfo -h -o %T 2>/dev/null | head -n1 || true)
        case $state in
            idle | mixed | allocated) break ;;
            down* | drain*) scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    case $state in
        idle | mixed | allocated) ;;
        *) die "the node did not come up (state ${state:-none}); see $LOGS/slurmctld.log and $LOGS/slurmd.log" ;;
    esac
    status
}

stop() {
    local name pid
    for name in slurmd slurmctld; do
        if pid=$(pid_of "$RUN/$name.pid"); then
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
        fi
    done
    if pid=$(pid_of /run/munge/munged.pid); then
        kill "$pid"
    fi
    echo "slurm_local: stopped"
}

status() {
    if ! answers; then
        echo "slurm_local: no Slurm controller answers (bench/slurm_local.sh start)" >&2
        return 1
    fi
    sinfo
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
