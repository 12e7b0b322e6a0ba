#!/usr/bin/env bash
# A one-node Slurm cluster on this machine for tests/test_slurm.py: Debian's slurm-wlm and munge
# (installed where missing), munged, slurmctld and slurmd, with a slurm.conf written here for this
# machine's hostname, CPU count and memory. No cgroups, no accounting database: proctrack/linuxproc,
# task/none, select/cons_tres by core. Idempotent: a cluster that already answers `sinfo` is left
# alone. Needs root (it writes /etc/slurm and starts the daemons as root). Where something cannot
# run it says so and exits 0: the Slurm tests then skip with the reason.
set -u
log=/tmp/ci_slurm.log
say() { echo "ci_slurm: $*"; }

if ! command -v slurmd >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
  say "installing slurm-wlm and munge"
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then   # keep apt from starting services the way a host would
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy=1
  fi
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge; } >"$log" 2>&1; then
    say "could not install slurm-wlm munge (see $log); the Slurm tests will skip"
  fi
  [ -n "$policy" ] && rm -f /usr/sbin/policy-rc.d
  command -v slurmd >/dev/null || exit 0
fi

if timeout 10 sinfo -h >/dev/null 2>&1 && [ -n "$(timeout 10 sinfo -h -t idle,mix,alloc -o %n 2>/dev/null)" ]; then
  say "a cluster is already up: $(sinfo -h -o '%P %D %t' | tr '\n' ' ')"
  exit 0
fi

node=$(hostname -s)
cpus=$(nproc)
mem=$(free -m | awk '/^Mem:/ {print int($2 * 0.8)}')
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
cat > /etc/slurm/slurm.conf <<CONF
# Written by scripts/ci_slurm.sh: a one-node test cluster on $node.
ClusterName=ban-ci
SlurmctldHost=$node
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
SlurmdTimeout=300
NodeName=$node CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF

if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge && dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null
chmod 0400 /etc/munge/munge.key; chmod 0700 /etc/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  if id munge >/dev/null 2>&1; then su -s /bin/sh munge -c munged >>"$log" 2>&1 || munged -f >>"$log" 2>&1
  else munged -f >>"$log" 2>&1; fi
  sleep 1
fi
munge -n | unmunge >/dev/null 2>&1 || { say "munged does not answer (see $log); the Slurm tests will skip"; exit 0; }

pgrep -x slurmctld >/dev/null || slurmctld >>"$log" 2>&1 || say "slurmctld did not start: $(tail -3 /var/log/slurm/slurmctld.log)"
pgrep -x slurmd >/dev/null || slurmd >>"$log" 2>&1 || say "slurmd did not start: $(tail -3 /var/log/slurm/slurmd.log)"
for _ in $(seq 30); do
  state=$(sinfo -h -n "$node" -o %t 2>/dev/null)
  case "$state" in idle*|mix*|alloc*) say "cluster up: node $node ($cpus CPUs, ${mem} MB) state $state"; exit 0;; esac
  sleep 1
done
say "the node is not idle after 30 s (state '${state:-none}'); slurmctld.log: $(tail -2 /var/log/slurm/slurmctld.log | tr '\n' ' ') slurmd.log: $(tail -2 /var/log/slurm/slurmd.log | tr '\n' ' ')"
exit 0
