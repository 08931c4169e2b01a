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

/// `lb version` names the commit; `lb completions bash` is a completion script.
#[test]
fn version_names_the_commit_and_completions_are_scripts() {
    let out = Command::new(lb()).arg("version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let commit = text
        .strip_prefix(&format!("lb {} (commit ", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected version line {text:?}"));
    let hash = commit.strip_suffix("-dirty").unwrap_or(commit);
    assert!(
        hash.len() == 12 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
        "built from a git checkout, the version names its commit: {text:?}"
    );
    for (shell, marker) in [
        ("bash", "_lb()"),
        ("zsh", "#compdef lb"),
        ("fish", "complete -c lb"),
    ] {
        let out = Command::new(lb())
            .args(["completions", shell])
            .output()
            .unwrap();
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && script.contains(marker),
            "{shell}: {script}"
        );
        assert!(
            script.contains("check-config"),
            "{shell} lists the subcommands"
        );
    }
}

/// `--log-format json`: every log line of a running agent is one JSON object.
#[test]
fn json_logs_are_one_object_per_line() {
    let ns = lb_tests::Netns::new("cli").expect("namespace");
    ns.ip(["link", "set", "lo", "up"]).expect("lo up");
    let cfg = std::env::temp_dir().join(format!("lbt-cli-json-{}.toml", std::process::id()));
    std::fs::write(
        &cfg,
        "[global]\ninterfaces = [\"lo\"]\nxdp_mode = \"generic\"\npin_path = \"\"\n\
         [registry]\nstate_file = \"\"\n",
    )
    .unwrap();
    let agent = ns
        .spawn(
            lb(),
            [
                "--log-format",
                "json",
                "run",
                "--config",
                cfg.to_str().unwrap(),
            ],
        )
        .expect("start agent");
    lb_tests::lab::wait_for_log(&agent, "\"running\"");
    let output = agent.output();
    drop(agent);
    let _ = std::fs::remove_file(&cfg);
    let lines: Vec<&str> = output.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}\nall:\n{output}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("\"message\":\"running\"")),
        "{output}"
    );
}
