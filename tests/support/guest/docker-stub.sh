#!/bin/bash
# docker stand-in for fireclaw's guest tests. Records every call (time and arguments) in
# /var/log/docker-stub.log. /etc/docker-stub/fail makes every call fail.
#
# Two ways to act out the OpenClaw image:
# - by default (fast, for tests about something else), the `bash -se` scripts fed to
#   `docker run` run with a fake `node` that logs its argv, and the gateway container serves
#   the health endpoints from a small fake (/etc/docker-stub/no-health keeps it silent);
# - with /etc/docker-stub/real-openclaw, the real OpenClaw the test bound at /app (the image's
#   layout) runs under the real Node bound at /opt/node: the same --env-file and -e
#   variables, the -v mounts bind-mounted at the same paths, the container's working dir /app,
#   so `node /app/openclaw.mjs ...` is the real CLI and `node dist/index.js gateway ...` the
#   real gateway. `docker exec` runs in the environment of the container it names. `node` is
#   a wrapper that logs each start of the CLI (/var/log/openclaw-runs.log) before it becomes
#   the real Node.
set -uo pipefail
state=/run/docker-stub
mkdir -p "$state"
printf '%s %s\n' "$(date +%s.%N)" "$*" >>/var/log/docker-stub.log
if [[ -e /etc/docker-stub/fail ]]; then
    echo "docker stub: failing on purpose" >&2
    exit 1
fi
real=false
[[ -e /etc/docker-stub/real-openclaw ]] && real=true

running() { [[ -f "$state/$1.pid" ]] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }
stop_container() {
    local pid
    if running "$1"; then
        pid=$(cat "$state/$1.pid")
        kill "$pid" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$state/$1.pid"
}

# The environment a container of the real image starts with: PATH with the image's Node, the
# --env-file lines (docker reads them literally: KEY=value, no quoting), then each -e. The
# guest stand-in has no internet: npm (which `openclaw doctor` asks about plugins) is told so
# up front instead of retrying the registry for minutes.
container_env=()
load_env() {
    local line
    container_env=("PATH=/usr/local/lib/docker-stub/real-bin:/opt/node/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        "npm_config_offline=true" "npm_config_fetch_retries=0")
    if [[ -n "$env_file" ]]; then
        while IFS= read -r line || [[ -n "$line" ]]; do
            [[ -z "$line" || "$line" == \#* ]] && continue
            container_env+=("$line")
        done <"$env_file"
    fi
    container_env+=("${extra_env[@]}")
}

# Runs "$@" with exactly the container's environment. Every exported variable of this shell is
# dropped and each of the container's is exported with the `export` builtin, so no value (the
# env file holds the instance's secrets) is ever on a command line.
exec_in_container() {
    local name entry
    for name in $(compgen -e); do
        unset "$name"
    done
    for entry in "${container_env[@]}"; do
        export "${entry?}"
    done
    cd /app && exec "$@"
}

# -v SRC:DST, as docker does it: DST exists and shows SRC (DST inside an earlier mount is
# created in that mount's source, as docker creates it).
mount_volumes() {
    local volume source target
    for volume in "${volumes[@]}"; do
        source=${volume%%:*}
        target=${volume#*:}
        target=${target%%:*}
        mkdir -p "$source" "$target"
        if ! mountpoint -q "$target"; then
            mount --bind "$source" "$target"
        fi
    done
}

command=${1:-}
shift || true
case "$command" in
    pull | info) exit 0 ;;
    version)
        # `version -f FORMAT` (the bake's facts) gets a version; plain `version` says nothing.
        [[ "${1:-}" == -f ]] && echo "0.0.0-stub"
        exit 0 ;;
    load)
        # `load -i FILE`: the "image" is the archive's digest, as an untagged OCI load reports.
        [[ "${1:-}" == -i && -f "${2:-}" ]] || { echo "docker stub: load needs -i FILE" >&2; exit 1; }
        loaded="sha256:$(sha256sum "$2" | cut -c1-64)"
        echo "$loaded" >"$state/loaded-image"
        echo "Loaded image ID: $loaded"
        exit 0 ;;
    tag)
        printf '%s %s\n' "$1" "$2" >>"$state/tags"
        exit 0 ;;
    image)
        # `image inspect [-f FORMAT] REF`. Until an archive is loaded, every image is there.
        # After a load, as after an untagged OCI load, only the loaded ID and the references
        # it was tagged with name an image; its Id is the loaded one.
        [[ "${1:-}" == inspect ]] || exit 0
        shift
        format=""
        if [[ "${1:-}" == -f ]]; then format=$2; shift 2; fi
        ref=${1:-}
        if [[ -f "$state/loaded-image" ]]; then
            loaded=$(cat "$state/loaded-image")
            if [[ "$ref" != "$loaded" ]] && ! grep -qxF "$loaded $ref" "$state/tags" 2>/dev/null; then
                echo "Error: No such image: $ref" >&2
                exit 1
            fi
        fi
        case "$format" in
            *.Id*) cat "$state/loaded-image" 2>/dev/null || echo "sha256:stub-image" ;;
            "") echo "[{}]" ;;
            *) echo ;;
        esac
        exit 0 ;;
    rm | stop) stop_container "${!#}"; exit 0 ;;
    inspect)
        if running "${!#}"; then echo true; else echo "Error: No such object: ${!#}" >&2; exit 1; fi ;;
    exec)
        name=$1
        shift
        running "$name" || { echo "Error: No such container: $name" >&2; exit 1; }
        if $real; then
            mapfile -t container_env <"$state/$name.env"
            exec_in_container "$@"
        fi
        echo '{"ok":true}' ;;
    run)
        name="" env_file=""
        extra_env=() volumes=()
        while (($#)); do
            case "$1" in
                --name) name=$2; shift 2 ;;
                --env-file) env_file=$2; shift 2 ;;
                -e) extra_env+=("$2"); shift 2 ;;
                -v) volumes+=("$2"); shift 2 ;;
                --network | -w | -u) shift 2 ;;
                --rm | -i | -t | -it | --init | -d) shift ;;
                *) break ;;
            esac
        done
        image=${1:-}
        shift || true
        if $real; then
            load_env
            mount_volumes
            if [[ "${1:-}" == bash && "${2:-}" == -se ]]; then
                exec_in_container bash -se
            fi
            if [[ "$*" == "node dist/index.js gateway"* ]]; then
                if [[ -n "$name" ]]; then
                    echo $$ >"$state/$name.pid"
                    # For `docker exec`: the container's environment, secrets included, 0600.
                    (umask 077 && printf '%s\n' "${container_env[@]}" >"$state/$name.env")
                fi
                exec_in_container "$@"
            fi
            echo "docker stub: $image $* is not acted out" >&2
            exit 0
        fi
        if [[ "${1:-}" == bash && "${2:-}" == -se ]]; then
            PATH=/usr/local/lib/docker-stub/bin:$PATH exec bash -se
        fi
        if [[ "$*" == "node dist/index.js gateway"* ]]; then
            [[ -n "$name" ]] && echo $$ >"$state/$name.pid"
            if [[ -e /etc/docker-stub/no-health ]]; then exec sleep infinity; fi
            exec /usr/bin/python3 /usr/local/lib/docker-stub/gateway.py
        fi
        echo "docker stub: $image $* is not acted out" >&2
        exit 0 ;;
    *) exit 0 ;;
esac
