#!/bin/bash
# npx's stand-in inside the docker stub, for `fireclaw image bake --browser-install`: acts out
# `npx -y playwright@VERSION install chromium` into the shared browser dir by leaving a
# Chromium headless shell where Playwright 1.49 puts one. Any other call fails as a missing npx
# did, so an instance's own browser install (tests about something else) stays unconfigured.
shared=/opt/fireclaw/playwright
if [[ "$*" == "-y playwright@"*" install chromium" && "${PLAYWRIGHT_BROWSERS_PATH:-}" == "$shared" ]]; then
    shell=$shared/chromium_headless_shell-1148/chrome-linux/headless_shell
    mkdir -p "${shell%/*}" && printf '#!/bin/sh\nexit 0\n' >"$shell" && chmod 0755 "$shell"
    exit 0
fi
echo "npx stand-in: $* is not acted out" >&2
exit 127
