#!/usr/bin/env bash
# fireclaw guest provisioning. fireclaw installs this as /usr/local/sbin/fireclaw-provision in
# the guest and runs it as root over SSH, with the instance's provision.vars (KEY=value lines,
# secrets included) on stdin, so no secret is ever on a command line. Idempotent: running it
# again converges on the same state. Nothing is written to /tmp.
#
# Two phases. `instance` (the default) is the whole provisioning of one instance. `install`
# (PHASE=install, what `fireclaw image bake` runs in its builder VM) does only what every
# instance shares: Docker, the image (pulled, or loaded from OPENCLAW_ARCHIVE) and, if asked,
# the browser in /opt/fireclaw/playwright; it needs no id, model or token, writes no config,
# secret or unit, and ends by printing `fireclaw-fact: key=value` lines on stdout.
set -euo pipefail

# Each step also goes to the guest's journal (journalctl -t fireclaw-provision); no step names
# a secret.
say() {
    printf 'fireclaw-provision: %s\n' "$*" >&2
    logger -t fireclaw-provision -- "$*" 2>/dev/null || true
}
die() { say "error: $*"; exit 1; }

# Each step's wall time goes to stdout (`fireclaw-step: <name>=<seconds>`, which fireclaw
# records) and to the journal. `step NAME` ends the step under way and begins NAME.
step_name=
step_began=
now_micros() {
    local now=$EPOCHREALTIME
    printf '%s' "${now//[.,]/}"
}
report_step() {
    local secs
    secs=$(printf '%d.%d' $(($2 / 1000000)) $((($2 % 1000000) / 100000)))
    printf 'fireclaw-step: %s=%s\n' "$1" "$secs"
    say "step '$1' took ${secs}s"
}
step() {
    local now
    now=$(now_micros)
    if [[ -n "$step_name" ]]; then
        report_step "$step_name" $((now - step_began))
    fi
    step_name=$1
    step_began=$now
}
# The last MICROS microseconds of the step under way were step NAME: step_split NAME MICROS.
step_split() {
    local now
    now=$(now_micros)
    report_step "$step_name" $((now - step_began - $2))
    report_step "$1" "$2"
    step_name=
    step_began=$now
}

# --- input ------------------------------------------------------------------------------------
declare -A input=()
while IFS= read -r line || [[ -n "$line" ]]; do
    [[ -z "$line" || "$line" == \#* ]] && continue
    key=${line%%=*}
    value=${line#*=}
    case "$key" in
        FIRECLAW_STATE_FORMAT | INSTANCE_ID | TELEGRAM_TOKEN | TELEGRAM_USERS | MODEL | SKILLS | \
            GATEWAY_TOKEN | OPENCLAW_IMAGE | SKIP_BROWSER_INSTALL | DISK_SIZE | ANTHROPIC_API_KEY | \
            OPENAI_API_KEY | MINIMAX_API_KEY | OPENCLAW_PULL | PHASE | OPENCLAW_ARCHIVE)
            input[$key]=$value
            ;;
        *) die "unknown input key '${key}'" ;;
    esac
done
# Everything below must not read the secrets' channel by accident.
exec </dev/null

phase=${input[PHASE]:-instance}
case "$phase" in
    install | instance) ;;
    *) die "PHASE must be install or instance" ;;
esac
image=${input[OPENCLAW_IMAGE]:-}
[[ -n "$image" ]] || die "OPENCLAW_IMAGE is missing"
archive=${input[OPENCLAW_ARCHIVE]:-}
[[ -z "$archive" || -f "$archive" ]] || die "OPENCLAW_ARCHIVE $archive is not a file in the guest"
if [[ "$phase" == instance ]]; then
    id=${input[INSTANCE_ID]:-}
    [[ "$id" =~ ^[a-z0-9_-]+$ ]] || die "INSTANCE_ID is missing or invalid"
    model=${input[MODEL]:-}
    [[ -n "$model" ]] || die "MODEL is missing"
    gateway_token=${input[GATEWAY_TOKEN]:-}
    [[ -n "$gateway_token" ]] || die "GATEWAY_TOKEN is missing"
else
    id=
    model=
    gateway_token=
fi
skills=${input[SKILLS]:-}
telegram_token=${input[TELEGRAM_TOKEN]:-}
telegram_users=${input[TELEGRAM_USERS]:-}
# When to pull the image (fireclaw.json's openclaw_pull; never in provision.vars).
pull_policy=${input[OPENCLAW_PULL]:-always}
case "$pull_policy" in
    always | missing | never) ;;
    *) die "OPENCLAW_PULL must be always, missing or never" ;;
esac
case "${input[SKIP_BROWSER_INSTALL]:-false}" in
    true | 1 | yes) skip_browser=true ;;
    *) skip_browser=false ;;
esac

user=ubuntu
# A browser baked into the image (`fireclaw image bake --browser-install`), shared read-only by
# every instance made from it.
shared_browsers=/opt/fireclaw/playwright
# The Chromium headless shell Playwright installed under $1: `chrome-headless-shell` in newer
# Playwright releases, `headless_shell` in older ones (1.49, the pinned fallback). Prints
# nothing when there is none.
find_headless_shell() {
    find "$1" -type f \( -name chrome-headless-shell -o -name headless_shell \) 2>/dev/null |
        sort | head -n 1 || true
}
config_root=/home/$user/.openclaw-$id
config_dir=$config_root/config
env_file=$config_root/openclaw.env
work_root=/home/$user/openclaw-$id
workspace=$work_root/workspace
tools=$work_root/tools
container=openclaw-$id
unit=openclaw-$id.service
unit_file=/etc/systemd/system/$unit
health_script=/usr/local/bin/openclaw-health-$id.sh

retry() {
    local tries=$1 attempt=1
    shift
    until "$@"; do
        ((attempt >= tries)) && return 1
        say "retrying ($attempt/$tries): $*"
        sleep $((attempt * 3))
        attempt=$((attempt + 1))
    done
}

# Writes stdin to $1 with mode $2 (owner $3), replacing it atomically; returns 1 when unchanged.
write_file() {
    local target=$1 mode=$2 owner=${3:-root:root} temp
    temp=$(mktemp "$(dirname "$target")/.fireclaw.XXXXXX")
    chmod "$mode" "$temp"
    cat >"$temp"
    chown "$owner" "$temp"
    if [[ -f "$target" ]] && cmp -s "$temp" "$target" && [[ "$(stat -c %a "$target")" == "${mode#0}" ]]; then
        rm -f "$temp"
        return 1
    fi
    mv -f "$temp" "$target"
}

# --- the guest OS -----------------------------------------------------------------------------
step cloud-init
say "waiting for cloud-init"
if command -v cloud-init >/dev/null 2>&1; then
    cloud-init status --wait >/dev/null 2>&1 || say "cloud-init reported a problem (continuing)"
fi

step "guest packages"
say "waiting for apt and dpkg"
for _ in $(seq 150); do
    pgrep -x 'apt|apt-get|dpkg|unattended-upgr' >/dev/null 2>&1 || break
    sleep 2
done

root_source=$(findmnt -no SOURCE / 2>/dev/null || true)
if [[ "$root_source" == /dev/* ]] && command -v resize2fs >/dev/null 2>&1; then
    say "growing the root filesystem"
    resize2fs "$root_source" >/dev/null 2>&1 || say "resize2fs failed (continuing)"
fi

missing=()
command -v docker >/dev/null 2>&1 || missing+=(docker.io)
command -v jq >/dev/null 2>&1 || missing+=(jq)
command -v curl >/dev/null 2>&1 || missing+=(curl)
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    retry 5 apt-get update -q >/dev/null
    retry 5 env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi
docker_bin=$(command -v docker)

step docker
# Docker's own bridge and nftables setup fail inside Firecracker guests; the gateway uses the
# host network anyway. Restart only when the file changes.
mkdir -p /etc/docker
if printf '%s\n' '{"iptables": false, "ip6tables": false, "bridge": "none"}' |
    write_file /etc/docker/daemon.json 0644; then
    say "restarting docker with the new daemon.json"
    systemctl restart docker.service
fi
systemctl enable --now docker.service >/dev/null 2>&1

step image
if [[ -n "$archive" ]]; then
    say "loading $image from the archive"
    loaded=$("$docker_bin" load -i "$archive") || die "docker load of the archive failed"
    if ! "$docker_bin" image inspect "$image" >/dev/null 2>&1; then
        # An OCI archive may load untagged ("Loaded image ID: sha256:..."): tag what it loaded.
        loaded_id=$(sed -n 's/^Loaded image ID: //p; s/^Loaded image: //p' <<<"$loaded" | tail -n 1)
        [[ -n "$loaded_id" ]] || die "the archive loaded no image"
        "$docker_bin" tag "$loaded_id" "$image" || die "could not tag the loaded image as $image"
    fi
    rm -f "$archive"
elif [[ "$pull_policy" != always ]] && "$docker_bin" image inspect "$image" >/dev/null 2>&1; then
    say "using $image, already in the guest (pull policy: $pull_policy)"
elif [[ "$pull_policy" == never ]]; then
    die "image $image is not in the guest and the pull policy is never: load it into the guest's Docker, or provision with --openclaw-pull missing"
else
    say "pulling $image"
    retry 3 "$docker_bin" pull -q "$image" >/dev/null
fi

# --- install phase: the browser for every instance, the facts, and nothing else ---------------
if [[ "$phase" == install ]]; then
    browser=false
    if [[ "$skip_browser" == false ]]; then
        step browser
        say "installing Playwright Chromium into $shared_browsers"
        install -d -m 0755 "$shared_browsers"
        printf '%s\n' \
            'set -e' \
            "export PLAYWRIGHT_BROWSERS_PATH=$shared_browsers" \
            'if [ -f /app/node_modules/playwright-core/cli.js ]; then' \
            '  node /app/node_modules/playwright-core/cli.js install chromium' \
            'else' \
            '  npx -y playwright@1.49.1 install chromium' \
            'fi' |
            "$docker_bin" run --rm -i --network host -u 0:0 -e HOME=/root \
                -v "$shared_browsers:$shared_browsers" "$image" bash -se >/dev/null ||
            die "the Playwright install failed"
        chmod -R a+rX "$shared_browsers"
        [[ -n "$(find_headless_shell "$shared_browsers")" ]] ||
            die "the Playwright install left no Chromium headless shell in $shared_browsers"
    fi
    # A base baked before may hold a browser already: report what is there.
    if [[ -n "$(find_headless_shell "$shared_browsers")" ]]; then
        browser=true
    fi
    printf 'fireclaw-fact: image_id=%s\n' "$("$docker_bin" image inspect -f '{{.Id}}' "$image")"
    printf 'fireclaw-fact: repo_digest=%s\n' "$("$docker_bin" image inspect -f '{{join .RepoDigests ","}}' "$image" 2>/dev/null || true)"
    printf 'fireclaw-fact: docker_version=%s\n' "$("$docker_bin" version -f '{{.Server.Version}}')"
    printf 'fireclaw-fact: browser=%s\n' "$browser"
    step ""
    say "done (install phase)"
    exit 0
fi

# --- OpenClaw ---------------------------------------------------------------------------------
install -d -o "$user" -g "$user" -m 0700 "$config_root" "$config_dir"
install -d -o "$user" -g "$user" -m 0755 "$work_root" "$workspace" "$tools"

# Node's compile cache in the tools volume, which outlives each container: every start of the
# CLI and of the gateway after the first reuses the code V8 compiled for it (OpenClaw's own
# default is the container's /tmp, gone with each throwaway container).
compile_cache=/home/node/clawd/tools/.node-compile-cache

# The only place the secret values live in the guest; the config refers to them as ${VAR}.
{
    printf '%s\n' NODE_ENV=production BROWSER=echo CLAWDBOT_PREFER_PNPM=1 OPENCLAW_PREFER_PNPM=1 \
        PLAYWRIGHT_BROWSERS_PATH=/home/node/clawd/tools/.playwright "NODE_COMPILE_CACHE=$compile_cache"
    printf 'OPENCLAW_GATEWAY_TOKEN=%s\n' "$gateway_token"
    printf 'ANTHROPIC_API_KEY=%s\n' "${input[ANTHROPIC_API_KEY]:-}"
    printf 'OPENAI_API_KEY=%s\n' "${input[OPENAI_API_KEY]:-}"
    printf 'MINIMAX_API_KEY=%s\n' "${input[MINIMAX_API_KEY]:-}"
    if [[ -n "$telegram_token" ]]; then
        printf 'TELEGRAM_BOT_TOKEN=%s\n' "$telegram_token"
    fi
} | write_file "$env_file" 0600 "$user:$user" || true

# A baked browser is mounted read-only where it was installed, in every container of the image.
baked_browser=$(find_headless_shell "$shared_browsers")
browser_mount=()
if [[ -n "$baked_browser" ]]; then
    browser_mount=(-v "$shared_browsers:$shared_browsers:ro")
fi

# Runs a bash script (stdin) in a throwaway container of the image with the OpenClaw CLI.
# npm gives up on an unreachable registry after one quick retry: OpenClaw's doctor runs npm to
# install plugins its config names but the image lacks, and with npm's default retries a
# guest without a registry waits minutes for it (measured: 4 minutes, against 40 s).
in_image() {
    "$docker_bin" run --rm -i --network host --env-file "$env_file" -e HOME=/home/node \
        -e npm_config_fetch_retries=1 -e npm_config_fetch_retry_mintimeout=2000 \
        -e npm_config_fetch_retry_maxtimeout=10000 \
        -v "$config_dir:/home/node/.openclaw" \
        -v "$workspace:/home/node/.openclaw/workspace" \
        -v "$tools:/home/node/clawd/tools" \
        "${browser_mount[@]}" "$image" bash -se
}

# The browser first, so its path goes into the one config write below.
browser_path=
if [[ -n "$baked_browser" ]]; then
    say "using the baked browser in $shared_browsers"
    browser_path=$baked_browser
elif [[ "$skip_browser" == false ]]; then
    step browser
    say "installing Playwright Chromium"
    # The image's own playwright when it has one, a pinned fallback otherwise.
    printf '%s\n' \
        'set -e' \
        'export PLAYWRIGHT_BROWSERS_PATH=/home/node/clawd/tools/.playwright' \
        'if [ -f /app/node_modules/playwright-core/cli.js ]; then' \
        '  node /app/node_modules/playwright-core/cli.js install chromium' \
        'else' \
        '  npx -y playwright@1.49.1 install chromium' \
        'fi' \
        'find /home/node/clawd/tools/.playwright -type f \( -name chrome-headless-shell -o -name headless_shell \) 2>/dev/null | sort | head -n 1' |
        in_image >"$config_root/.browser-path" 2>/dev/null || say "Playwright install failed (continuing)"
    browser_path=$(head -n 1 "$config_root/.browser-path" 2>/dev/null || true)
    rm -f "$config_root/.browser-path"
    if [[ "$browser_path" != /home/node/clawd/tools/* ]]; then
        say "Chromium headless shell not found; browser tools stay unconfigured"
        browser_path=
    fi
fi

to_json_array() { jq -cn --arg csv "$1" '$csv | split(",") | map(gsub("^\\s+|\\s+$"; "")) | map(select(length > 0))'; }

# The MiniMax provider block: OpenClaw knows MiniMax-M2.1 only through it.
# shellcheck disable=SC2016 # a literal ${VAR} reference, substituted by OpenClaw
minimax_provider=$(jq -cn '{
    baseUrl: "https://api.minimax.io/anthropic",
    api: "anthropic-messages",
    apiKey: "${MINIMAX_API_KEY}",
    models: [{id: "MiniMax-M2.1", name: "MiniMax M2.1", reasoning: false,
              input: ["text"], contextWindow: 200000, maxTokens: 8192}]
}')

# The instance's whole config as one patch object (`openclaw config patch`: objects merge,
# arrays and scalars replace, null deletes). Applied to an existing config (`fireclaw
# provision`), a merge keeps what an earlier run set, so what is now off is deleted on
# purpose: the MiniMax block and the `models` it made (and the plugin entry OpenClaw's doctor
# enabled for it) after a switch to another provider, and Telegram's token, policies and
# allowlists (the group allowlist is one doctor copies) once Telegram is off. The result is
# the config a fresh instance of the same settings gets. The secrets stay ${VAR} references.
current_config=$(jq -c 'if type == "object" then . else {} end' "$config_dir/openclaw.json" 2>/dev/null || echo '{}')
# shellcheck disable=SC2016 # literal ${VAR} references, substituted by OpenClaw
config_patch=$(jq -cn \
    --argjson current "$current_config" \
    --arg model "$model" \
    --argjson minimax "$minimax_provider" \
    --argjson skills "$(to_json_array "$skills")" \
    --arg telegram "${telegram_token:+on}" \
    --argjson users "$(to_json_array "$telegram_users")" \
    --arg browser "$browser_path" '
    ($model | startswith("minimax/")) as $uses_minimax
    | ($current.models // {}) as $models
    | {
        gateway: {mode: "local", bind: "lan", auth: {mode: "token", token: "${OPENCLAW_GATEWAY_TOKEN}"},
                  tailscale: {mode: "off"}},
        models: (if $uses_minimax then {mode: "merge", providers: {minimax: $minimax}}
                 elif ((($models.providers // {}) | del(.minimax) | length) == 0
                       and ($models | del(.providers, .mode) | length) == 0) then null
                 else {providers: {minimax: null}} end),
        agents: {defaults: {model: {primary: $model}, skipBootstrap: false}},
        skills: {allowBundled: $skills},
        channels: {telegram: (if $telegram == "on" then
                      {enabled: true, botToken: "${TELEGRAM_BOT_TOKEN}", dmPolicy: "allowlist",
                       groupPolicy: "disabled", allowFrom: $users}
                   else
                      {enabled: false, botToken: null, dmPolicy: null, groupPolicy: null,
                       allowFrom: null, groupAllowFrom: null}
                   end)},
        plugins: {entries: ({telegram: {enabled: ($telegram == "on")}}
                  + (if ($uses_minimax | not) and $current.plugins.entries.minimax == {enabled: true}
                     then {minimax: null} else {} end))}
      }
    + (if $browser != "" then {browser: {executablePath: $browser}} else {} end)')

# The same settings as `config set` lines, for images whose OpenClaw has no `config patch`:
# every word quoted for the container's shell, stdin closed so no run reads the script.
config_lines=()
set_config() {
    local words="node /app/openclaw.mjs config set" word
    for word in "$@"; do
        words+=" $(printf '%q' "$word")"
    done
    config_lines+=("$words </dev/null >/dev/null")
}
# Literal ${VAR} references: OpenClaw substitutes them from the container's environment.
# shellcheck disable=SC2016
{
    set_config gateway.mode local
    set_config gateway.bind lan
    set_config gateway.auth.mode token
    set_config gateway.auth.token '${OPENCLAW_GATEWAY_TOKEN}'
    set_config gateway.tailscale.mode off
    # The provider first: OpenClaw checks the primary model against the providers it knows
    # when it is set, and MiniMax-M2.1 is known only through this block.
    if [[ "$model" == minimax/* ]]; then
        set_config models.mode merge
        set_config models.providers.minimax "$minimax_provider" --json
    fi
    set_config agents.defaults.model.primary "$model"
    set_config agents.defaults.skipBootstrap false --json
    set_config skills.allowBundled "$(to_json_array "$skills")" --json
    if [[ -n "$telegram_token" ]]; then
        set_config channels.telegram.enabled true --json
        set_config channels.telegram.botToken '${TELEGRAM_BOT_TOKEN}'
        set_config channels.telegram.dmPolicy allowlist
        set_config channels.telegram.groupPolicy disabled
        set_config channels.telegram.allowFrom "$(to_json_array "$telegram_users")" --json
        set_config plugins.entries.telegram.enabled true --json
    else
        set_config channels.telegram.enabled false --json
        set_config plugins.entries.telegram.enabled false --json
    fi
    if [[ -n "$browser_path" ]]; then
        set_config browser.executablePath "$browser_path"
    fi
}

# Whether an OpenClaw release has `openclaw config patch`: 2026.4.29 is the first (its
# prereleases 2026.4.29-beta.* have it too; 2026.4.27 does not). Anything unreadable gets the
# per-key path, which every release has.
openclaw_has_config_patch() {
    local year month day
    IFS=.- read -r year month day _ <<<"$1"
    [[ "$year" =~ ^[0-9]+$ && "$month" =~ ^[0-9]+$ && "$day" =~ ^[0-9]+$ ]] || return 1
    ((10#$year > 2026 || (10#$year == 2026 && (10#$month > 4 || (10#$month == 4 && 10#$day >= 29)))))
}

# A guest may force one path (`patch` or `set`) in this file: a way around a bad release, and
# how the tests and bench_provision run the per-key path on a release that has both.
forced_path=$(head -n 1 /etc/fireclaw/openclaw-config-path 2>/dev/null || true)
case "$forced_path" in
    patch | set | "") ;;
    *) die "/etc/fireclaw/openclaw-config-path must say patch or set" ;;
esac

# One container run configures OpenClaw: it reads the image's OpenClaw version, writes the
# whole config (one `config patch`, or a `config set` per key on older releases), then runs
# `doctor --fix` once. It reports on stdout which path ran and when each part began.
step "openclaw config"
say "configuring OpenClaw"
config_report=$({
    printf '%s\n' 'set -e'
    declare -f openclaw_has_config_patch
    printf 'forced_path=%q\n' "$forced_path"
    printf 'config_patch=%q\n' "$config_patch"
    printf '%s\n' 'set_path() {' "${config_lines[@]}" '}'
    cat <<'IN_CONTAINER'
mark() { printf 'fireclaw-mark: %s %s\n' "$1" "${EPOCHREALTIME//[.,]/}"; }
version=$(sed -n 's/^[[:space:]]*"version"[[:space:]]*:[[:space:]]*"\([^"]*\)".*/\1/p' /app/package.json 2>/dev/null | head -n 1)
path=$forced_path
if [ -z "$path" ]; then
    if openclaw_has_config_patch "$version"; then path=patch; else path=set; fi
fi
printf 'fireclaw-config: %s %s\n' "$path" "${version:-unknown}"
if [ "$path" = patch ]; then
    printf '%s\n' "$config_patch" | node /app/openclaw.mjs config patch --stdin >/dev/null
    doctor_flags=(--fix --non-interactive)
else
    set_path
    doctor_flags=(--fix)
fi
mark doctor
if ! doctor_said=$(node /app/openclaw.mjs doctor "${doctor_flags[@]}" </dev/null 2>&1); then
    echo 'fireclaw-doctor: failed'
    # Its last words, for the journal (the doctor names config paths, never their values).
    printf '%s\n' "$doctor_said" | grep -v '^[│|[:space:]]*$' | tail -n 6 | sed 's/^/fireclaw-doctor-said: /'
fi
mark end
IN_CONTAINER
} | in_image) || die "configuring OpenClaw failed (see the lines above)"
config_path=$(sed -n 's/^fireclaw-config: //p' <<<"$config_report" | head -n 1)
say "OpenClaw config written by the ${config_path%% *} path (OpenClaw ${config_path#* })"
if grep -q '^fireclaw-doctor: failed' <<<"$config_report"; then
    say "openclaw doctor --fix reported problems (continuing); it ended with:"
    while IFS= read -r said; do
        say "  $said"
    done < <(sed -n 's/^fireclaw-doctor-said: //p' <<<"$config_report")
fi
# The doctor's share of the container run, from the run's own marks.
doctor_began=$(sed -n 's/^fireclaw-mark: doctor //p' <<<"$config_report")
doctor_ended=$(sed -n 's/^fireclaw-mark: end //p' <<<"$config_report")
if [[ "$doctor_began" =~ ^[0-9]+$ && "$doctor_ended" =~ ^[0-9]+$ ]]; then
    step_split "openclaw doctor" $((doctor_ended - doctor_began))
fi
printf 'fireclaw-fact: config_path=%s\n' "${config_path%% *}"

# --- health script and service ----------------------------------------------------------------
step "gateway service"
# Healthy: the container runs and /healthz (or /health) answers JSON with ok or status ok/live;
# images without JSON health fall back to the CLI's health check, once their gateway answers
# HTTP at all. Prints ok or legacy.
# shellcheck disable=SC2016 # the script's own variables, written literally
{
    printf '%s\n' '#!/usr/bin/env bash' 'set -uo pipefail'
    printf 'container=%q\n' "$container"
    printf 'docker=%q\n' "$docker_bin"
    printf '%s\n' \
        '[ "$("$docker" inspect -f "{{.State.Running}}" "$container" 2>/dev/null)" = true ] || { echo "container $container is not running" >&2; exit 1; }' \
        'healthy() { jq -e "type == \"object\" and (.ok == true or .status == \"ok\" or .status == \"live\")" >/dev/null 2>&1; }' \
        'for path in /healthz /health; do' \
        '  if curl -fsS --max-time 5 "http://127.0.0.1:18789$path" 2>/dev/null | healthy; then echo ok; exit 0; fi' \
        'done' \
        '# Not while nothing answers on the port (the gateway is starting): a start of the CLI' \
        '# for every probe would slow that start down.' \
        'code=$(curl -s -o /dev/null -w "%{http_code}" --max-time 5 http://127.0.0.1:18789/ 2>/dev/null)' \
        'if [ "${code:-000}" = 000 ]; then echo "nothing answers on :18789 yet" >&2; exit 1; fi' \
        'if "$docker" exec "$container" node /app/openclaw.mjs health --json 2>/dev/null | healthy; then echo legacy; exit 0; fi' \
        'echo "the gateway on :18789 is not healthy" >&2' \
        'exit 1'
} | write_file "$health_script" 0755 || true

{
    printf '%s\n' '[Unit]' "Description=OpenClaw gateway ($id)" 'After=docker.service' \
        'Requires=docker.service' '' '[Service]'
    printf 'ExecStartPre=-%s rm -f %s\n' "$docker_bin" "$container"
    printf 'ExecStart=%s run --rm --name %s --init --network host --env-file %s -e HOME=/home/node -v %s:/home/node/.openclaw -v %s:/home/node/.openclaw/workspace -v %s:/home/node/clawd/tools %s%s node dist/index.js gateway --bind lan --port 18789\n' \
        "$docker_bin" "$container" "$env_file" "$config_dir" "$workspace" "$tools" \
        "${baked_browser:+-v $shared_browsers:$shared_browsers:ro }" "$image"
    printf 'ExecStop=%s stop %s\n' "$docker_bin" "$container"
    printf '%s\n' 'Restart=always' 'RestartSec=5' '' '[Install]' 'WantedBy=multi-user.target'
} | write_file "$unit_file" 0644 || true

systemctl daemon-reload
systemctl enable "$unit" >/dev/null 2>&1
say "restarting $unit"
systemctl restart "$unit"
step ""
say "done"
