//! The real OpenClaw in the guest stand-in: the pinned OpenClaw and Node (scripts/test-deps)
//! behind the docker stub, configured by fireclaw's real provisioning script, serving the real
//! gateway.
//!
//! One instance goes through the config variants in turn (a setup, then four provisions), and
//! each resulting `openclaw.json` is compared, as JSON and without OpenClaw's own timestamps,
//! with the golden the old per-key path (a `config set` per key) wrote for the same sequence:
//! `tests/openclaw-goldens/`, written once by `scripts/openclaw-goldens`, which runs this test
//! with FIRECLAW_WRITE_OPENCLAW_GOLDENS=1 and the per-key path forced. The two transitions that
//! turn something off (MiniMax switched away, Telegram off) differ from their goldens by
//! exactly what the one-patch path deletes on purpose, and equal the config a fresh instance of
//! the same settings gets. Each provisioning starts the OpenClaw CLI at most three times,
//! counted by a `node` wrapper in the container. The same gateway serves the token check
//! through the localhost proxy and `openclaw config validate`.
//!
//! A second test gives the guest an older OpenClaw release without `config patch`: the
//! script reads its version and takes the per-key path.
//!
//! The other sandbox tests use the fast fake CLI and gateway (tests/support/guest/); they are
//! about fireclaw's own steps, not OpenClaw's answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;

use fireclaw::env_vars::FIRECLAW_WRITE_OPENCLAW_GOLDENS;
use support::fleet::Fleet;

const OPENAI_KEY: &str = "sk-openai-real-openclaw-secret";
const ANTHROPIC_KEY: &str = "sk-ant-real-openclaw-secret";
const MINIMAX_KEY: &str = "mm-real-openclaw-secret";
const TELEGRAM_TOKEN: &str = "123456:AAHrealOpenclawBotSecret";
/// The gateway's first start: about 40 s on these machines, more while other guests boot.
const WAITS: &str = "--ssh-timeout 120 --health-timeout 400";
/// A baked browser's headless shell, as a baked base carries it (`image bake`).
const BAKED_BROWSER: &str =
    "/opt/fireclaw/playwright/chromium_headless_shell-1148/chrome-linux/headless_shell";

/// The configuration the gateway reads, as JSON.
fn config(fleet: &Fleet) -> serde_json::Value {
    let text = fleet.guest("a", "cat /home/ubuntu/.openclaw-a/config/openclaw.json");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The config without OpenClaw's own timestamps (`wizard.lastRunAt`, any `...At` that holds a
/// time), keys sorted: what a golden holds.
fn comparable(mut value: serde_json::Value) -> serde_json::Value {
    fn strip(value: &mut serde_json::Value) {
        if let Some(object) = value.as_object_mut() {
            object.retain(|key, value| {
                !(key.ends_with("At")
                    && value
                        .as_str()
                        .is_some_and(|v| v.len() >= 20 && v.as_bytes()[4] == b'-'))
            });
            object.values_mut().for_each(strip);
        }
    }
    strip(&mut value);
    // serde_json's map is ordered by key: a round trip sorts it.
    serde_json::from_str(&value.to_string()).unwrap()
}

/// Deletes dotted paths from a JSON value (a path it lacks is no error: the per-key path's
/// doctor does not always get to add what the one-patch path deletes, such as Telegram's
/// group allowlist).
fn without(mut value: serde_json::Value, paths: &[&str]) -> serde_json::Value {
    for path in paths {
        let keys: Vec<&str> = path.split('.').collect();
        let mut target = &mut value;
        for key in &keys[..keys.len() - 1] {
            target = &mut target[*key];
        }
        if let Some(object) = target.as_object_mut() {
            object.remove(keys[keys.len() - 1]);
        }
    }
    value
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/openclaw-goldens")
        .join(format!("{name}.json"))
}

fn writing_goldens() -> bool {
    std::env::var(FIRECLAW_WRITE_OPENCLAW_GOLDENS).as_deref() == Ok("1")
}

/// Writes the golden `name` (writing mode) or returns it.
fn golden(name: &str, actual: &serde_json::Value) -> serde_json::Value {
    let path = golden_path(name);
    if writing_goldens() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut text = serde_json::to_string_pretty(actual).unwrap();
        text.push('\n');
        std::fs::write(&path, text).unwrap();
    }
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: make the goldens with scripts/openclaw-goldens",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// `openclaw config validate` inside the running gateway container.
fn validate(fleet: &Fleet) -> String {
    fleet.guest(
        "a",
        "docker exec openclaw-a node /app/openclaw.mjs config validate 2>&1; echo rc=$?",
    )
}

/// Starts of the OpenClaw CLI so far in the guest of `a` (the `node` wrapper's log); none
/// before `a` exists.
fn cli_runs(fleet: &Fleet) -> usize {
    if !fleet.host.ok("test -f /var/lib/fireclaw/.vm-a/.env") {
        return 0;
    }
    fleet
        .guest("a", "cat /var/log/openclaw-runs.log 2>/dev/null || true")
        .lines()
        .count()
}

/// Runs one provisioning (`setup` or `provision`) and returns how many times it started the
/// OpenClaw CLI and which config path it reported.
fn provisioning(fleet: &Fleet, args: &str) -> (usize, String) {
    let before = cli_runs(fleet);
    let started = std::time::Instant::now();
    let out = fleet.fireclaw_ok(&format!("{args} {WAITS} --json"));
    eprintln!("{args}: {:?}", started.elapsed());
    let result: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(result["healthy"], true, "{result}");
    let steps: Vec<String> = result["times"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{} {} ms", s["name"].as_str().unwrap(), s["ms"]))
        .collect();
    eprintln!("  steps: {}", steps.join(", "));
    let journal = fleet.guest(
        "a",
        "journalctl -t fireclaw-provision --no-pager -o cat | grep 'OpenClaw config written' | tail -n 1",
    );
    (cli_runs(fleet) - before, journal.trim().to_owned())
}

/// POST /tools/invoke through the localhost proxy; the token travels in a header file the
/// test writes itself, never on a command line. Returns the HTTP status.
/// `invoke`, asked again while the gateway answers 5xx, up to 30 s: OpenClaw 2026.9.6 has
/// answered `sessions_list` with "tool execution failed" for some seconds after a restart that
/// its `/healthz` already calls healthy (seen in CI after `provision --no-telegram`).
fn invoke_settled(fleet: &Fleet, port: &str, token: Option<&str>) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status = invoke(fleet, port, token);
        if !status.starts_with('5') || std::time::Instant::now() > deadline {
            return status;
        }
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
}

fn invoke(fleet: &Fleet, port: &str, token: Option<&str>) -> String {
    // Not under /run, which is the sandbox's own tmpfs and hides the disk's /run.
    let header = fleet.host.root().join("var/lib/fireclaw-test-auth-header");
    let header_arg = match token {
        Some(token) => {
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&header)
                .unwrap();
            std::io::Write::write_all(
                &mut file,
                format!("Authorization: Bearer {token}\n").as_bytes(),
            )
            .unwrap();
            "-H @/var/lib/fireclaw-test-auth-header"
        }
        None => "",
    };
    let body = fleet.host.root().join("var/lib/fireclaw-test-invoke-body");
    let status = fleet.host.sh(&format!(
        "curl -s -o /var/lib/fireclaw-test-invoke-body -w '%{{http_code}}' --max-time 30 {header_arg} \
         -H 'Content-Type: application/json' \
         --data '{{\"tool\":\"sessions_list\",\"args\":{{}}}}' \
         http://127.0.0.1:{port}/tools/invoke"
    ));
    let _ = std::fs::remove_file(&header);
    let status = status.trim().to_owned();
    // A failure's body and the gateway's last words say why, where a bare status would not.
    if status.starts_with('5') {
        let said = std::fs::read_to_string(&body).unwrap_or_default();
        let log = fleet.guest(
            "a",
            "sudo journalctl --no-pager -o cat -n 60 -u 'openclaw*' 2>&1; \
             sudo sh -c 'tail -n 30 /tmp/openclaw/*.log /home/*/.openclaw-a/logs/* 2>/dev/null' | cut -c1-600; true",
        );
        eprintln!("/tools/invoke answered {status}: {said}\ngateway log:\n{log}");
    }
    let _ = std::fs::remove_file(&body);
    status
}

fn assert_only_references(fleet: &Fleet) {
    let text = fleet.guest("a", "cat /home/ubuntu/.openclaw-a/config/openclaw.json");
    for secret in [OPENAI_KEY, ANTHROPIC_KEY, MINIMAX_KEY, TELEGRAM_TOKEN] {
        assert!(!text.contains(secret), "a secret is in the config: {text}");
    }
    let token = fleet.fireclaw_ok("token a");
    assert!(
        !text.contains(token.trim()),
        "the gateway token is in the config"
    );
}

/// The path that ran and the CLI starts of one provisioning: the one-patch path starts the
/// CLI twice (the patch and the doctor); the per-key path, when writing the goldens, once per
/// key and once for the doctor.
fn assert_path(runs: usize, journal: &str) {
    if writing_goldens() {
        assert!(journal.contains("by the set path"), "{journal}");
    } else {
        assert!(
            journal.contains("by the patch path (OpenClaw 2026.9.6)"),
            "{journal}"
        );
        assert!(runs <= 3, "{runs} starts of the OpenClaw CLI");
        assert_eq!(runs, 2, "the patch and the doctor");
    }
}

#[test]
#[ignore = "needs root: sandbox"]
fn the_real_openclaw_gets_the_per_key_paths_config_in_one_write_and_serves_with_its_token() {
    let fleet = Fleet::new("openclaw");
    fleet.guests.use_real_openclaw();
    if writing_goldens() {
        fleet
            .guests
            .preset("/etc/fireclaw/openclaw-config-path", "set\n");
    }

    // 1. A local-only OpenAI instance with the default skills.
    let (runs, journal) = provisioning(
        &fleet,
        &format!(
            "setup --instance a --skip-browser-install --disk-size 64M --openai-api-key {OPENAI_KEY}"
        ),
    );
    assert_path(runs, &journal);
    let actual = comparable(config(&fleet));
    assert_eq!(actual, golden("openai", &actual));
    let port = fleet.env_value("a", "HOST_PORT");
    // The guest's own gate reads the real /healthz (not the CLI fallback, "legacy").
    let gate = fleet.guest(
        "a",
        "sudo /usr/local/bin/openclaw-health-a.sh; curl -sS --max-time 5 http://127.0.0.1:18789/healthz",
    );
    assert!(gate.starts_with("ok\n"), "{gate}");
    let health = fleet
        .host
        .sh(&format!("curl -fsS http://127.0.0.1:{port}/healthz"));
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["ok"], true, "{health}");
    let list: serde_json::Value = serde_json::from_str(&fleet.fireclaw_ok("list --json")).unwrap();
    assert_eq!(list["instances"][0]["health"], "up", "{list}");
    let status = fleet.fireclaw_ok("status a");
    assert!(status.contains("health         up"), "{status}");
    assert!(status.contains("last provision setup took "), "{status}");
    // The token reference took effect: refused without the token, answered with it.
    let token = fleet.fireclaw_ok("token a");
    assert_eq!(invoke(&fleet, &port, None), "401");
    assert_eq!(invoke_settled(&fleet, &port, Some(token.trim())), "200");
    let validated = validate(&fleet);
    assert!(validated.ends_with("rc=0\n"), "{validated}");
    assert_only_references(&fleet);

    // 2. Anthropic, Telegram with an allowlist, two skills.
    let (runs, journal) = provisioning(
        &fleet,
        &format!(
            "provision a --model anthropic/claude-sonnet-4-6 --anthropic-api-key {ANTHROPIC_KEY} \
             --telegram-token {TELEGRAM_TOKEN} --telegram-users 5,6 --skills github,tmux"
        ),
    );
    assert_path(runs, &journal);
    let actual = comparable(config(&fleet));
    assert_eq!(actual, golden("anthropic-telegram-skills", &actual));

    // 3. MiniMax (its provider block), with a baked browser for its path. The MiniMax model
    //    is the one fireclaw's provisioning declares (MiniMax-M2.1): OpenClaw 2026.9.6 accepts
    //    it only with the provider block, which a test of the per-key path once caught.
    fleet.guest(
        "a",
        &format!(
            "sudo mkdir -p {dir} && printf '#!/bin/sh\\n' | sudo tee {BAKED_BROWSER} >/dev/null && sudo chmod 0755 {BAKED_BROWSER}",
            dir = BAKED_BROWSER.rsplit_once('/').unwrap().0
        ),
    );
    let (runs, journal) = provisioning(
        &fleet,
        &format!("provision a --model minimax/MiniMax-M2.1 --minimax-api-key {MINIMAX_KEY}"),
    );
    assert_path(runs, &journal);
    let actual = comparable(config(&fleet));
    assert_eq!(actual, golden("minimax-browser", &actual));
    assert_eq!(actual["browser"]["executablePath"], BAKED_BROWSER);
    let validated = validate(&fleet);
    assert!(validated.ends_with("rc=0\n"), "{validated}");
    assert_only_references(&fleet);

    // 4. Switched away from MiniMax: its block, the `models` it made and the plugin entry
    //    OpenClaw's doctor enabled for it are gone, where the per-key path left them.
    let (runs, journal) = provisioning(&fleet, "provision a --model openai/gpt-5.5");
    assert_path(runs, &journal);
    let actual = comparable(config(&fleet));
    let expected = golden("openai-from-minimax", &actual);
    if !writing_goldens() {
        assert_eq!(
            actual,
            without(expected, &["models", "plugins.entries.minimax"])
        );
    }

    // 5. Telegram off: its token reference, policies and allowlists (the group one doctor
    //    copied) are gone, where the per-key path set only `enabled: false`. (The per-key
    //    path's golden still carries the MiniMax leftovers of step 4.)
    let (runs, journal) = provisioning(&fleet, "provision a --no-telegram");
    assert_path(runs, &journal);
    let actual = comparable(config(&fleet));
    let expected = golden("telegram-off", &actual);
    if !writing_goldens() {
        assert_eq!(
            actual,
            without(
                expected,
                &[
                    "models",
                    "plugins.entries.minimax",
                    "channels.telegram.botToken",
                    "channels.telegram.dmPolicy",
                    "channels.telegram.groupPolicy",
                    "channels.telegram.allowFrom",
                    "channels.telegram.groupAllowFrom",
                ]
            )
        );
    }
    assert_eq!(invoke_settled(&fleet, &port, Some(token.trim())), "200");
    let validated = validate(&fleet);
    assert!(validated.ends_with("rc=0\n"), "{validated}");

    // stop/start keeps the gateway's configuration, starts no CLI, and is healthy again.
    let before = fleet.guest(
        "a",
        "sha256sum /home/ubuntu/.openclaw-a/config/openclaw.json",
    );
    let runs = cli_runs(&fleet);
    fleet.fireclaw_ok("stop a");
    let started = std::time::Instant::now();
    let out = fleet.fireclaw_ok(&format!("start a {WAITS}"));
    eprintln!("start with the real gateway: {:?}", started.elapsed());
    assert!(out.contains("Instance a is healthy."), "{out}");
    assert_eq!(cli_runs(&fleet), runs);
    assert_eq!(
        fleet.guest(
            "a",
            "sha256sum /home/ubuntu/.openclaw-a/config/openclaw.json"
        ),
        before
    );
    assert_eq!(invoke_settled(&fleet, &port, Some(token.trim())), "200");
}

#[test]
#[ignore = "needs root: sandbox"]
fn an_openclaw_without_config_patch_is_configured_key_by_key() {
    let fleet = Fleet::new("openclaw-old");
    fleet.guests.use_fallback_openclaw();
    let (runs, journal) = provisioning(
        &fleet,
        &format!(
            "setup --instance a --skip-browser-install --disk-size 64M --openai-api-key {OPENAI_KEY} \
             --telegram-token {TELEGRAM_TOKEN} --telegram-users 7"
        ),
    );
    assert!(
        journal.contains("by the set path (OpenClaw 2026.4.27)"),
        "{journal}"
    );
    // A `config set` per key (five for the gateway, the model, skipBootstrap, the skills, six
    // for Telegram), then the doctor.
    assert_eq!(runs, 15, "starts of the OpenClaw CLI");
    let written = config(&fleet);
    assert_eq!(
        written["agents"]["defaults"]["model"]["primary"],
        "openai/gpt-5.5"
    );
    assert_eq!(
        written["channels"]["telegram"]["botToken"],
        "${TELEGRAM_BOT_TOKEN}"
    );
    assert_eq!(
        written["gateway"]["auth"]["token"],
        "${OPENCLAW_GATEWAY_TOKEN}"
    );
    assert_eq!(
        written["meta"]["lastTouchedVersion"], "2026.4.27",
        "{written}"
    );
    let validated = validate(&fleet);
    assert!(validated.ends_with("rc=0\n"), "{validated}");
    assert_only_references(&fleet);
}
