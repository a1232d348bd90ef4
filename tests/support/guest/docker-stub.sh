#!/bin/bash
# docker stand-in for fireclaw's guest tests. Records every call (time and arguments), runs the
# `bash -se` scripts fed to `docker run` with a fake `node` on PATH, and for the gateway
# container serves the health endpoints on :18789. /etc/docker-stub/fail makes every call fail;
# /etc/docker-stub/no-health keeps the gateway from answering.
set -uo pipefail
state=/run/docker-stub
mkdir -p "$state"
printf '%s %s\n' "$(date +%s.%N)" "$*" >>/var/log/docker-stub.log
if [[ -e /etc/docker-stub/fail ]]; then
    echo "docker stub: failing on purpose" >&2
    exit 1
fi

running() { [[ -f "$state/$1.pid" ]] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null; }
stop_container() {
    local pid
    if running "$1"; then
        pid=$(cat "$state/$1.pid")
        kill "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$state/$1.pid"
}

command=${1:-}
shift || true
case "$command" in
    pull | version | info) exit 0 ;;
    rm | stop) stop_container "${!#}"; exit 0 ;;
    inspect)
        if running "${!#}"; then echo true; else echo "Error: No such object: ${!#}" >&2; exit 1; fi ;;
    exec)
        if running "$1"; then echo '{"ok":true}'; else exit 1; fi ;;
    run)
        name=""
        while (($#)); do
            case "$1" in
                --name) name=$2; shift 2 ;;
                --env-file | -e | -v | --network | -w | -u) shift 2 ;;
                --rm | -i | -t | -it | --init | -d) shift ;;
                *) break ;;
            esac
        done
        image=${1:-}
        shift || true
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
