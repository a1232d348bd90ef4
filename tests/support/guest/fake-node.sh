#!/bin/bash
# The OpenClaw CLI's stand-in inside the docker stub: logs its arguments, tab-separated; a
# `config patch --stdin` also logs the patch it was fed (one line of JSON) as a last field.
args=("$@")
if [[ "${2:-}" == config && "${3:-}" == patch ]]; then
    args+=("$(tr -d '\n\t')")
fi
(IFS=$'\t'; printf '%s\n' "${args[*]}") >>/var/log/fake-node.log
if [[ "${2:-}" == health ]]; then echo '{"ok":true}'; fi
exit 0
