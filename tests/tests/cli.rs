//! The `lb` binary's command line: `check-config` exit codes and messages.

use std::{path::PathBuf, process::Command};

use lb_tests::lb_binary as lb;

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config")
}

#[test]
fn check_config_accepts_the_examples() {
    for name in ["lb.toml", "demo.toml"] {
        let out = Command::new(lb())
            .args(["check-config"])
            .arg(examples().join(name))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
    }
}

#[test]
fn check_config_names_file_line_and_field_of_every_error() {
    let path = std::env::temp_dir().join(format!("lbt-cli-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        r#"[global]
interfaces = ["eth0"]
maglev_table_size = 65536

[[service]]
name = "web"
vip = "10.0.0.300"
port = 0
protocol = "tcp"
colour = "blue"
[[service.backend]]
address = "10.0.2.2"
port = 8080
weight = 0
"#,
    )
    .unwrap();
    let out = Command::new(lb())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "must fail: {stdout}");
    let file = path.display().to_string();
    for (line, field) in [
        (3, "global.maglev_table_size"),
        (7, "service[0].vip"),
        (8, "service[0].port"),
        (10, "service[0].colour"),
    ] {
        let want = format!("{file}:{line}:");
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&want) && l.contains(field)),
            "no error for {field} at line {line} in:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("weight > 0"),
        "missing the no-usable-backend error:\n{stdout}"
    );
}
