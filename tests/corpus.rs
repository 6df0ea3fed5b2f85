//! The malformed-input corpus (`tests/corpus/`): every bad file a user might feed the tool must
//! end in exit code 1 and a one-paragraph error naming it, never a panic (exit code 101) or
//! partial output presented as success.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    command: String,
    names: String,
    expect: String,
}

#[derive(Debug, Deserialize)]
struct Corpus {
    case: Vec<Case>,
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(corpus_dir().join("cases.toml")).unwrap();
    toml::from_str::<Corpus>(&text).unwrap().case
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn every_case_directory_is_listed_and_there_are_at_least_twenty() {
    let listed: Vec<String> = cases().into_iter().map(|c| c.name).collect();
    let mut on_disk: Vec<String> = std::fs::read_dir(corpus_dir().join("cases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    on_disk.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(
        sorted, on_disk,
        "cases.toml and tests/corpus/cases/ disagree"
    );
    assert!(listed.len() >= 20, "only {} cases", listed.len());
}

#[test]
fn every_malformed_input_gets_a_clear_error_naming_it() {
    let mut failures = Vec::new();
    for case in cases() {
        let tmp = tempfile::tempdir().unwrap();
        let args: Vec<String> = case
            .command
            .split_whitespace()
            .map(|a| a.replace("{tmp}", &tmp.path().display().to_string()))
            .collect();
        let output = Command::new(env!("CARGO_BIN_EXE_distill"))
            .args(&args)
            .current_dir(corpus_dir().join("cases").join(&case.name))
            // keep the user's caches out of it
            .env("DISTILL_DATA", tmp.path().join("cache"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let mut problems = Vec::new();
        if output.status.code() != Some(1) {
            problems.push(format!("exit code {:?}, expected 1", output.status.code()));
        }
        if !stderr.starts_with("error: ") {
            problems.push("stderr does not start with `error: `".to_string());
        }
        if stderr.contains("panicked") || stderr.contains("RUST_BACKTRACE") {
            problems.push("a panic".to_string());
        }
        if stderr.trim_end().contains("\n\n") {
            problems.push("more than one paragraph".to_string());
        }
        if !stderr.contains(&case.names) {
            problems.push(format!("does not name `{}`", case.names));
        }
        if !stderr.contains(&case.expect) {
            problems.push(format!("does not say `{}`", case.expect));
        }
        if !stdout.trim().is_empty() {
            problems.push(format!("printed on stdout: {stdout}"));
        }
        let leftovers: Vec<PathBuf> = files_under(tmp.path())
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n == "report.md" || n == "model.bpk")
            })
            .collect();
        if !leftovers.is_empty() {
            problems.push(format!("left results behind: {leftovers:?}"));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{} (`distill {}`): {}\n  stderr: {stderr}",
                case.name,
                case.command,
                problems.join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
