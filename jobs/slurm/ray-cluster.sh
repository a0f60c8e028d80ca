#!/usr/bin/env bash
# Start a Ray cluster over the nodes of a SLURM allocation; sourced by segment.sbatch and
# train.sbatch (not run on its own). The first node runs the Ray head, every other node one
# Ray worker; each node offers Ray the CPUs and GPUs SLURM gave it. Ray's ports listen on the
# nodes' cluster-internal addresses only, with token authentication on by default.
#
# Settings (environment variables; defaults in brackets):
#   NUCFLOW_VENV         venv with nucflow installed, on a path every node sees   [required]
#   RAY_PORT             Ray (GCS) port on the head                                [6379]
#   RAY_DASHBOARD_PORT   dashboard / Jobs API port on the head (internal address)  [8265]
#   RAY_NODE_TMP         node-local temp dir for Ray's sockets, logs and spill     [/tmp/ray-$SLURM_JOB_ID]
#   RAY_OBJECT_STORE_GB  object store per node in GiB                              [Ray's default]
#   NUCFLOW_RAY_AUTH     token: a fresh random token per job; disabled: none      [token]
#   RAY_START_TIMEOUT    seconds to wait for all nodes to join                     [300]
#
# After ray_cluster_start: RAY_ADDRESS (HEAD_IP:RAY_PORT, for --address) and
# RAY_API_SERVER_ADDRESS (http://HEAD_IP:RAY_DASHBOARD_PORT, for nucflow submit) are exported.
# ray_cluster_stop ends the Ray steps this script started (install it with `trap ... EXIT`);
# it never runs `ray stop`, which would also stop other Ray instances on a shared node.

ray_cluster_start() {
    : "${NUCFLOW_VENV:?set NUCFLOW_VENV to a venv with nucflow installed, on a shared path}"
    # shellcheck disable=SC1091
    source "${NUCFLOW_VENV}/bin/activate"
    RAY_PORT="${RAY_PORT:-6379}"
    RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
    RAY_NODE_TMP="${RAY_NODE_TMP:-/tmp/ray-${SLURM_JOB_ID}}"
    export RAY_USAGE_STATS_ENABLED=0
    _ray_cluster_auth

    mapfile -t RAY_NODES < <(scontrol show hostnames "${SLURM_JOB_NODELIST}")
    RAY_HEAD_NODE="${RAY_NODES[0]}"
    RAY_HEAD_IP="$(srun --nodes=1 --ntasks=1 -w "${RAY_HEAD_NODE}" hostname --ip-address | awk '{print $1}')"
    export RAY_ADDRESS="${RAY_HEAD_IP}:${RAY_PORT}"
    export RAY_API_SERVER_ADDRESS="http://${RAY_HEAD_IP}:${RAY_DASHBOARD_PORT}"

    local cpus="${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}"
    local gpus="${SLURM_GPUS_ON_NODE:-0}"
    local store=()
    if [[ -n "${RAY_OBJECT_STORE_GB:-}" ]]; then
        store=(--object-store-memory "$((RAY_OBJECT_STORE_GB * 1024 * 1024 * 1024))")
    fi
    # ${a[@]+"${a[@]}"}: an empty array under `set -u` on bash older than 4.4 (CentOS 7).
    local common=(--block --num-cpus "${cpus}" --num-gpus "${gpus}" --temp-dir "${RAY_NODE_TMP}"
                  --disable-usage-stats ${store[@]+"${store[@]}"})

    echo "ray-cluster: head ${RAY_HEAD_NODE} (${RAY_HEAD_IP}), ${#RAY_NODES[@]} node(s), ${cpus} CPU(s) and ${gpus} GPU(s) per node"
    srun --nodes=1 --ntasks=1 --cpus-per-task="${cpus}" -w "${RAY_HEAD_NODE}" \
        ray start --head --node-ip-address="${RAY_HEAD_IP}" --port="${RAY_PORT}" \
        --dashboard-host="${RAY_HEAD_IP}" --dashboard-port="${RAY_DASHBOARD_PORT}" \
        "${common[@]}" &
    RAY_STEP_PIDS=($!)
    _ray_cluster_wait 1

    local workers=$(( ${#RAY_NODES[@]} - 1 ))
    if (( workers > 0 )); then
        srun --nodes="${workers}" --ntasks="${workers}" --ntasks-per-node=1 \
            --cpus-per-task="${cpus}" --exclude="${RAY_HEAD_NODE}" \
            ray start --address="${RAY_ADDRESS}" "${common[@]}" &
        RAY_STEP_PIDS+=($!)
    fi
    _ray_cluster_wait "${#RAY_NODES[@]}"
}

_ray_cluster_auth() {
    case "${NUCFLOW_RAY_AUTH:-token}" in
        token)
            export RAY_AUTH_MODE=token
            if [[ -z "${RAY_AUTH_TOKEN:-}" && -z "${RAY_AUTH_TOKEN_PATH:-}" ]]; then
                # One secret per job, only in this job's environment (srun passes it on).
                RAY_AUTH_TOKEN="$(python -c 'import secrets; print(secrets.token_hex(32))')"
                export RAY_AUTH_TOKEN
            fi ;;
        disabled)
            export RAY_AUTH_MODE=disabled ;;
        *)
            echo "ray-cluster: NUCFLOW_RAY_AUTH must be token or disabled, got '${NUCFLOW_RAY_AUTH}'" >&2
            return 2 ;;
    esac
}

_ray_cluster_wait() {
    # Wait until WANT nodes are alive (or RAY_START_TIMEOUT seconds pass).
    local want="$1" deadline=$(( SECONDS + ${RAY_START_TIMEOUT:-300} ))
    until python - "${want}" <<'PY' 2>/dev/null
import os, sys, ray
ray.init(address=os.environ["RAY_ADDRESS"], logging_level="ERROR")
alive = sum(1 for n in ray.nodes() if n["Alive"])
ray.shutdown()
sys.exit(0 if alive >= int(sys.argv[1]) else 1)
PY
    do
        if (( SECONDS > deadline )); then
            echo "ray-cluster: fewer than ${want} Ray node(s) alive after ${RAY_START_TIMEOUT:-300} s" >&2
            return 1
        fi
        sleep 5
    done
}

ray_cluster_stop() {
    # End the srun steps that run `ray start --block`; SLURM signals their processes on every node.
    # Keeps the job's exit status: the steps end by signal, which is not a failure here.
    local pid
    for pid in ${RAY_STEP_PIDS[@]+"${RAY_STEP_PIDS[@]}"}; do
        kill -TERM "${pid}" 2>/dev/null || true
    done
    for pid in ${RAY_STEP_PIDS[@]+"${RAY_STEP_PIDS[@]}"}; do
        wait "${pid}" 2>/dev/null || true
    done
}
