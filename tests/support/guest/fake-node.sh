#!/bin/bash
# The OpenClaw CLI's stand-in inside the docker stub: logs its arguments, tab-separated.
(IFS=$'\t'; printf '%s\n' "$*") >>/var/log/fake-node.log
if [[ "${3:-}" == health ]]; then echo '{"ok":true}'; fi
exit 0
