//! The real OpenClaw in the guest stand-in: the pinned OpenClaw and Node (scripts/test-deps)
//! behind the docker stub, configured by fireclaw's real provisioning script, serving the real
//! gateway. One gateway serves every assertion it can, because each start takes about 40 s on
//! two cores: setup through both health gates, the gateway token reference working end to end
//! through the localhost proxy, `openclaw config validate` for a local-only and then a
//! Telegram + MiniMax configuration with secrets only as `${...}` references, a provision that
//! changes model and skills, and stop/start keeping the configuration.
//!
//! The other sandbox tests use the fast fake CLI and gateway (tests/support/guest/); they are
//! about fireclaw's own steps, not OpenClaw's answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::fleet::Fleet;

const OPENAI_KEY: &str = "sk-openai-real-openclaw-secret";
const MINIMAX_KEY: &str = "mm-real-openclaw-secret";
const TELEGRAM_TOKEN: &str = "123456:AAHrealOpenclawBotSecret";
/// The gateway's first start: about 40 s on these machines, more while other guests boot.
const WAITS: &str = "--ssh-timeout 120 --health-timeout 400";

/// The configuration the gateway reads, as JSON.
fn config(fleet: &Fleet) -> serde_json::Value {
    let text = fleet.guest("a", "cat /home/ubuntu/.openclaw-a/config/openclaw.json");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `openclaw config validate` inside the running gateway container.
fn validate(fleet: &Fleet) -> String {
    fleet.guest(
        "a",
        "docker exec openclaw-a node /app/openclaw.mjs config validate 2>&1; echo rc=$?",
    )
}

/// POST /tools/invoke through the localhost proxy; the token travels in a header file the
/// test writes itself, never on a command line. Returns the HTTP status.
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
    let status = fleet.host.sh(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}' --max-time 30 {header_arg} \
         -H 'Content-Type: application/json' \
         --data '{{\"tool\":\"sessions_list\",\"args\":{{}}}}' \
         http://127.0.0.1:{port}/tools/invoke"
    ));
    let _ = std::fs::remove_file(&header);
    status.trim().to_owned()
}

fn assert_only_references(fleet: &Fleet) {
    let text = fleet.guest("a", "cat /home/ubuntu/.openclaw-a/config/openclaw.json");
    for secret in [OPENAI_KEY, MINIMAX_KEY, TELEGRAM_TOKEN] {
        assert!(!text.contains(secret), "a secret is in the config: {text}");
    }
    let token = fleet.fireclaw_ok("token a");
    assert!(
        !text.contains(token.trim()),
        "the gateway token is in the config"
    );
}

#[test]
#[ignore = "needs root: sandbox"]
fn the_real_openclaw_is_configured_by_provisioning_and_serves_with_its_token() {
    let fleet = Fleet::new("openclaw");
    fleet.guests.use_real_openclaw();
    let started = std::time::Instant::now();
    let out = fleet.fireclaw_ok(&format!(
        "setup --instance a --skip-browser-install --disk-size 64M {WAITS} --openai-api-key {OPENAI_KEY}"
    ));
    eprintln!("setup with the real gateway: {:?}", started.elapsed());
    assert!(out.contains("Instance a is healthy."), "{out}");
    let port = fleet.env_value("a", "HOST_PORT");
    // The guest's own gate reads the real /healthz (not the CLI fallback, "legacy").
    let gate = fleet.guest(
        "a",
        "sudo /usr/local/bin/openclaw-health-a.sh; curl -sS --max-time 5 http://127.0.0.1:18789/healthz",
    );
    assert!(gate.starts_with("ok\n"), "{gate}");

    // The real health answer, through the proxy; list and status agree.
    let health = fleet
        .host
        .sh(&format!("curl -fsS http://127.0.0.1:{port}/healthz"));
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["ok"], true, "{health}");
    let health = fleet
        .host
        .sh(&format!("curl -fsS http://127.0.0.1:{port}/health"));
    assert!(health.contains("\"ok\":true"), "{health}");
    let list: serde_json::Value = serde_json::from_str(&fleet.fireclaw_ok("list --json")).unwrap();
    assert_eq!(list["instances"][0]["health"], "up", "{list}");
    assert!(fleet.fireclaw_ok("status a").contains("health         up"));

    // The token reference took effect: refused without the token, answered with it.
    let token = fleet.fireclaw_ok("token a");
    assert_eq!(invoke(&fleet, &port, None), "401");
    assert_eq!(invoke(&fleet, &port, Some(token.trim())), "200");

    // The real CLI accepts what provisioning wrote; secrets are references only.
    let validated = validate(&fleet);
    assert!(validated.ends_with("rc=0\n"), "{validated}");
    let local = config(&fleet);
    assert_eq!(
        local["gateway"]["auth"]["token"],
        "${OPENCLAW_GATEWAY_TOKEN}"
    );
    assert_eq!(
        local["agents"]["defaults"]["model"]["primary"],
        "openai/gpt-5.5"
    );
    assert_only_references(&fleet);

    // Model, skills and Telegram change what the real config holds; health comes back. The
    // MiniMax model is the one fireclaw's provisioning declares (MiniMax-M2.1): OpenClaw
    // 2026.9.6 accepts it only when the provider block is set before the model, which this
    // test caught.
    let started = std::time::Instant::now();
    fleet.fireclaw_ok(&format!(
        "provision a {WAITS} --model minimax/MiniMax-M2.1 --minimax-api-key {MINIMAX_KEY} \
         --skills github,tmux --telegram-token {TELEGRAM_TOKEN} --telegram-users 5,6"
    ));
    eprintln!("provision with the real gateway: {:?}", started.elapsed());
    let changed = config(&fleet);
    assert_eq!(
        changed["agents"]["defaults"]["model"]["primary"],
        "minimax/MiniMax-M2.1"
    );
    assert_eq!(
        changed["skills"]["allowBundled"],
        serde_json::json!(["github", "tmux"])
    );
    assert_eq!(
        changed["channels"]["telegram"]["enabled"], true,
        "{changed}"
    );
    let validated = validate(&fleet);
    assert!(validated.ends_with("rc=0\n"), "{validated}");
    assert_only_references(&fleet);
    assert_eq!(invoke(&fleet, &port, Some(token.trim())), "200");

    // stop/start keeps the gateway's configuration and brings it back healthy.
    let before = fleet.guest(
        "a",
        "sha256sum /home/ubuntu/.openclaw-a/config/openclaw.json",
    );
    fleet.fireclaw_ok("stop a");
    let started = std::time::Instant::now();
    let out = fleet.fireclaw_ok(&format!("start a {WAITS}"));
    eprintln!("start with the real gateway: {:?}", started.elapsed());
    assert!(out.contains("Instance a is healthy."), "{out}");
    assert_eq!(
        fleet.guest(
            "a",
            "sha256sum /home/ubuntu/.openclaw-a/config/openclaw.json"
        ),
        before
    );
    assert_eq!(invoke(&fleet, &port, Some(token.trim())), "200");
}
