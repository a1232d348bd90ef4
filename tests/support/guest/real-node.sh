#!/bin/bash
# `node` in the docker stub's real-OpenClaw containers: each start of the OpenClaw CLI (Node on
# openclaw.mjs) is one line of /var/log/openclaw-runs.log, then this becomes the real Node.
if [[ "${1:-}" == */openclaw.mjs || "${1:-}" == openclaw.mjs ]]; then
    printf '%s %s\n' "$(date +%s.%N)" "$*" >>/var/log/openclaw-runs.log
fi
exec /opt/node/bin/node "$@"
