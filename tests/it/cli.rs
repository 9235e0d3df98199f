//! The `switchyard` command line: `config check`.

use std::process::Command;

fn config_check(file: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchyard.toml");
    std::fs::write(&path, file).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["config", "check", "--config"])
        .arg(&path)
        .env("SWITCHYARD_ADMIN_TOKEN", "a-token-that-must-not-show")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_check_names_the_broken_key_and_exits_non_zero() {
    for (file, key) in [
        ("partitions = 0\n", "partitions"),
        ("lease_ms = 100\nheartbeat_ms = 1000\n", "lease_ms"),
        ("listen = \"nowhere\"\n", "listen"),
        ("partitons = 8\n", "partitons"),
        ("log_format = \"xml\"\n", "log_format"),
    ] {
        let (ok, _, err) = config_check(file);
        assert!(!ok, "{file} was accepted");
        assert!(
            err.contains(key),
            "the error for {file:?} does not name {key}: {err}"
        );
    }
}

#[test]
fn config_check_prints_the_effective_config_with_secrets_masked() {
    let (ok, out, err) =
        config_check("partitions = 16\nredis_url = \"redis://:hunter22@127.0.0.1:6379/\"\n");
    assert!(ok, "{err}");
    assert!(out.contains("partitions = 16"));
    assert!(out.contains("admin_token = \"********\""));
    assert!(
        !out.contains("a-token-that-must-not-show") && !out.contains("hunter22"),
        "{out}"
    );
}
