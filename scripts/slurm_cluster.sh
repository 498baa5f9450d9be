#!/usr/bin/env bash
# A throwaway Slurm cluster of N one-CPU nodes on this machine, from nothing, and gone without a trace.
#
#   scripts/slurm_cluster.sh run [--nodes N] -- COMMAND...   start, run COMMAND against it, stop (also on Ctrl-C)
#   scripts/slurm_cluster.sh start DIR [N]                   start in the empty folder DIR; prints SLURM_CONF=...
#   scripts/slurm_cluster.sh stop DIR                        end every job, stop the daemons, delete DIR
#
# Everything lives in DIR: a fresh munge key, slurm.conf, the daemons' state, logs and pid files. Clients
# find the cluster through SLURM_CONF=DIR/slurm.conf (its AuthInfo names the private munge socket). The
# nodes n1..nN are all this machine (NodeAddr=127.0.0.1, one slurmd each on its own port); their names do
# not resolve, so a job must take a node's address from `scontrol show node NAME` (NodeAddr), as the course's
# recipes do. Needs root (slurmd starts jobs as their users) and the Debian packages slurm-wlm and munge
# (scripts/install_slurm.sh). Daemons start with setsid and are stopped by their pids; on stop, every job is
# cancelled and the queue must empty first, or slurmstepd and srun would be left hanging.
set -euo pipefail

die() { echo "slurm_cluster: $*" >&2; exit 1; }

free_ports() {  # N distinct free TCP ports on 127.0.0.1
    python3 - "$1" <<'EOF'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
EOF
}

write_config() {  # DIR NODES CTLD_PORT NODE_PORT...  (one port for each node's slurmd)
    local dir=$1 nodes=$2 ctld_port=$3
    shift 3
    cat > "$dir/slurm.conf" <<EOF
# A throwaway cluster made by scripts/slurm_cluster.sh: $nodes nodes, all this machine
ClusterName=dtutor
FirstJobId=$(( $(date +%s%N) / 1000000 % 50000000 + 1 ))  # unique across throwaway clusters (output files)
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge-run/munge.socket
StateSaveLocation=$dir/ctld
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SchedulerType=sched/builtin
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
KillWait=5
MinJobAge=600
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    local i=1 port
    for port in "$@"; do  # every node is this machine, its slurmd on its own port
        echo "NodeName=n$i NodeHostname=$(hostname) NodeAddr=127.0.0.1 Port=$port CPUs=1 State=UNKNOWN"
        i=$((i + 1))
    done >> "$dir/slurm.conf"
}

start_munge() {  # DIR: a fresh key in a 0700 folder; the socket's folder must be 0755 or munged refuses it
    local dir=$1
    mkdir -p -m 0700 "$dir/munge"
    mkdir -p -m 0755 "$dir/munge-run"
    dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
    chmod 0400 "$dir/munge/munge.key"
    setsid munged --foreground --force --socket="$dir/munge-run/munge.socket" --key-file="$dir/munge/munge.key" \
        --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" --seed-file="$dir/munge/seed" \
        </dev/null >>"$dir/log/munged.out" 2>&1 &
    echo $! > "$dir/run/munged.pid"
    for _ in $(seq 100); do [ -S "$dir/munge-run/munge.socket" ] && return 0; sleep 0.05; done
    die "munged did not start; see $dir/munge/munged.log"
}

wait_idle() {  # DIR NODES: until sinfo shows every node idle (at most 30 s)
    local dir=$1 nodes=$2
    for _ in $(seq 300); do
        local idle
        idle=$(SLURM_CONF="$dir/slurm.conf" sinfo -h -N -t idle -o %N 2>/dev/null | wc -l)
        [ "$idle" -ge "$nodes" ] && return 0
        sleep 0.1
    done
    die "the nodes did not become idle; see $dir/log/"
}

start() {  # DIR [NODES]
    local dir=$1 nodes=${2:-2}
    [ "$(id -u)" = 0 ] || die "needs root (slurmd runs jobs as their users)"
    command -v slurmctld >/dev/null && command -v munged >/dev/null || die "slurm-wlm and munge are not installed"
    [ -d "$dir" ] && [ -z "$(ls -A "$dir")" ] || die "$dir must be an empty folder"
    dir=$(cd "$dir" && pwd)
    mkdir -p "$dir/ctld" "$dir/run" "$dir/log"
    for i in $(seq "$nodes"); do mkdir -p "$dir/spool/n$i"; done
    local ports
    read -r -a ports <<< "$(free_ports $((nodes + 1)))"
    write_config "$dir" "$nodes" "${ports[@]}"
    export DTUTOR_SLURM_CLUSTER="$dir"  # every daemon and job step carries it: how leftovers are found
    start_munge "$dir"
    setsid slurmctld -D -i -f "$dir/slurm.conf" </dev/null >>"$dir/log/slurmctld.out" 2>&1 &
    echo $! > "$dir/run/slurmctld.setsid.pid"
    for i in $(seq "$nodes"); do
        setsid slurmd -D -N "n$i" -f "$dir/slurm.conf" </dev/null >>"$dir/log/slurmd-n$i.out" 2>&1 &
        echo $! > "$dir/run/slurmd-n$i.setsid.pid"
    done
    wait_idle "$dir" "$nodes"
    echo "SLURM_CONF=$dir/slurm.conf"
}

alive() {  # PID: running (a zombie waiting to be reaped counts as ended)
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ $state != Z* ]]
}

stop_pid() {  # PIDFILE: TERM, then KILL after 5 s
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 50); do alive "$pid" || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}

stop() {  # DIR
    local dir=$1
    [ -f "$dir/slurm.conf" ] || { rm -rf "$dir"; return 0; }
    export SLURM_CONF="$dir/slurm.conf"
    if [ -f "$dir/run/slurmctld.setsid.pid" ] && alive "$(cat "$dir/run/slurmctld.setsid.pid")"; then
        timeout 10 scancel --full --quiet --partition=debug 2>/dev/null || true
        local deadline=$((SECONDS + 15)) queue  # at most 15 s of the clock for every job to leave the queue:
        while (( SECONDS < deadline )); do  # counted in seconds, not tries (one squeue can take a second under load)
            queue=$(timeout 5 squeue -h -o %i 2>/dev/null) && [ -z "$queue" ] && break
            sleep 0.1
        done
    fi
    for pidfile in "$dir"/run/slurmd-*.setsid.pid; do [ -e "$pidfile" ] && stop_pid "$pidfile"; done
    stop_pid "$dir/run/slurmctld.setsid.pid"
    stop_pid "$dir/run/munged.pid"
    sweep "$dir"
    rm -rf "$dir"
}

sweep() {  # DIR: kill what still carries DTUTOR_SLURM_CLUSTER=DIR (a job step that outlived its daemons)
    local environ pid
    for environ in $(grep -lsxzF "DTUTOR_SLURM_CLUSTER=$1" /proc/[0-9]*/environ); do
        pid=${environ#/proc/}
        pid=${pid%/environ}
        { [ "$pid" = $$ ] || [ "$pid" = "$BASHPID" ]; } && continue
        echo "slurm_cluster: killing leftover $pid $(cat "/proc/$pid/comm" 2>/dev/null)" >&2
        kill -KILL "$pid" 2>/dev/null || true
    done
}

child=""  # the command run() is running (global: the EXIT trap needs it)

run() {  # [--nodes N] -- COMMAND...
    local nodes=2
    if [ "${1:-}" = --nodes ]; then nodes=$2; shift 2; fi
    [ "${1:-}" = -- ] && shift
    [ $# -gt 0 ] || die "usage: $0 run [--nodes N] -- COMMAND..."
    local dir
    dir=$(mktemp -d /tmp/dtutor-slurm.XXXXXX)
    # shellcheck disable=SC2064
    trap "trap - EXIT INT TERM; [ -n \"\$child\" ] && kill -TERM -- -\"\$child\" 2>/dev/null; stop '$dir'" EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    local conf
    conf=$(start "$dir" "$nodes" | tail -n 1)
    export "${conf?}"
    echo "slurm_cluster: $nodes nodes up ($conf)" >&2
    setsid "$@" &  # its own process group, so that an interruption ends everything it started
    child=$!
    local status=0
    wait "$child" || status=$?
    child=""
    return "$status"
}

case "${1:-}" in
    start) shift; start "$@" ;;
    stop) shift; stop "$@" ;;
    run) shift; run "$@" ;;
    *) die "usage: $0 {run [--nodes N] -- COMMAND... | start DIR [NODES] | stop DIR}" ;;
esac
