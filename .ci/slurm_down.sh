#!/usr/bin/env bash
# Stop the daemons .ci/slurm_up.sh started (by their pid files), leaving everything else alone.
STATE=${SLURM_CI_STATE:-/var/spool/illustrious-slurm}
scancel --user=root 2>/dev/null || true
[ -e "$STATE/started-munged" ] && cp /run/munge/munged.pid "$STATE/munged.pid" 2>/dev/null
rm -f "$STATE/started-munged"
for daemon in slurmd slurmctld munged; do
    pidfile="$STATE/$daemon.pid"
    if [ -s "$pidfile" ]; then
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        rm -f "$pidfile"
    fi
done
