#!/usr/bin/env bash
# Install and start a one-node SLURM cluster on this machine (Debian 12, root): munge, slurmctld, slurmd.
# Settings follow shared/ENVIRONMENT.md. Stop it with .ci/slurm_down.sh (which stops only what this started).
# For CI and dev machines only: it writes /etc/slurm/slurm.conf and first stops any slurmctld/slurmd running here.
set -euo pipefail

STATE=${SLURM_CI_STATE:-/var/spool/illustrious-slurm}
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

# Start from nothing: an earlier run on this machine that was killed (or is still going) leaves daemons and saved
# jobs behind, and slurmctld would recover a job still holding the node, which then never shows idle (a stop's CI
# failed so, "SLURM did not come up", on a job recovered from a run killed minutes before).
kill_tree() {  # a job step's slurmstepd ignores SIGTERM, and its job's processes outlive it
    local child
    for child in $(ps -o pid= --ppid "$1" 2>/dev/null); do kill_tree "$child"; done
    kill -9 "$1" 2>/dev/null || true
}
running() { pgrep -x slurmctld || pgrep -x slurmd || pgrep -x slurmstepd; }  # pgrep -x: names, one at a time
for daemon in slurmctld slurmd; do pkill -x "$daemon" 2>/dev/null || true; done
for stepd in $(pgrep -x slurmstepd || true); do kill_tree "$stepd"; done
for _ in $(seq 1 20); do running >/dev/null || break; sleep 0.5; done
for daemon in slurmctld slurmd; do  # one that ignored SIGTERM would keep its port from the new one
    pkill -9 -x "$daemon" 2>/dev/null || true
done
rm -f "$STATE/slurmctld.pid" "$STATE/slurmd.pid"
rm -rf "$STATE/ctld" "$STATE/d"

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
mkdir -p /etc/slurm "$STATE/ctld" "$STATE/d" /var/log/slurm /run/munge
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=illustrious-ci
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
# A requeued job may start again cred_expire seconds (default 120) after the requeue, and is then started by the
# next periodic scheduling pass (sched_interval, default 60 s): the requeue test's job waits ~15 s, not 1-3 minutes.
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
MpiDefault=none
# Preemption as clusters run it: a job in the higher-tier partition "urgent" requeues the debug jobs in its way;
# they get SIGTERM and GraceTime seconds to save before SIGKILL (tests/integration/test_slurm.py).
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=120
PartitionName=urgent Nodes=$host MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
CONF

# munge: a key owned by munge (mode 400), the daemon run as the munge user
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key /run/munge
chmod 400 /etc/munge/munge.key
if ! pgrep -u munge -x munged >/dev/null; then
    runuser -u munge -- munged  # writes /run/munge/munged.pid
    touch "$STATE/started-munged"  # so slurm_down.sh stops only a munged this script started
fi

slurmctld
slurmd
for _ in $(seq 1 60); do
    if sinfo -h -o %t 2>/dev/null | grep -q idle; then
        sinfo
        exit 0
    fi
    sleep 1
done
echo "SLURM did not come up; logs:" >&2
tail -n 30 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
exit 1
