#!/usr/bin/env bash
# Install Slurm (Debian's slurm-wlm) and munge where they are missing and this machine allows it (root, apt-get),
# so that tests/test_launch_slurm.py and notebook 08 run their jobs on scripts/slurm_cluster.sh's throwaway
# cluster. Elsewhere it says why and succeeds: the Slurm tests then skip with the reason. .ci/run calls it;
# a learner never needs it (about 15 s; nothing is configured or started: the cluster script does that).
set -euo pipefail
packages=(slurm-wlm munge)
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null; then
    echo "[slurm] installed: $(slurmd -V)"
    exit 0
fi
if [[ $(id -u) != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "[slurm] not installed, and not installable here (needs root and apt-get): the Slurm tests will skip"
    exit 0
fi
# The packages would start their services (munge, slurmd, slurmctld) from the system's configuration: a
# policy-rc.d that refuses every start stops that, and goes once the install is done.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y -q "${packages[@]}" >/dev/null; then
    apt-get update -q >/dev/null
    apt-get install -y -q "${packages[@]}" >/dev/null
fi
echo "[slurm] installed: $(slurmd -V)"
