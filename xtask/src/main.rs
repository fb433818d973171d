//! `cargo xtask <task>`: the commands CI runs, runnable locally with only the Rust toolchain
//! (plus the Python 3 that the interop scripts use to install their own tools).
//!
//! - `test`: every test — the API contract checks (buf lint, format and breaking against the
//!   last release), the workspace's unit and integration tests (on SQLite, and on PostgreSQL
//!   too when `PALISADE_TEST_POSTGRES_URL` is set), then the interop scripts that drive a
//!   running `palisade dev` from outside Rust (grpcurl, generated Python and Node clients),
//!   then every fuzz target for a bounded time (`PALISADE_FUZZ_SECONDS` each, default 15;
//!   `0` skips them locally, never in CI).
//! - `ci`: `cargo fmt --check`, clippy with `-D warnings`, then `test`. With `CI` set it also
//!   insists that PostgreSQL is configured, so a CI run can never silently skip it.
//! - `api-baseline`: at release time, rewrite `proto/breaking-baseline.binpb`, the image that
//!   `buf breaking` compares against, from the current protos.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

/// Scripts that drive a live `palisade dev` from outside Rust; each installs its own tools,
/// prints its own result line and exits non-zero on failure.
const INTEROP_SCRIPTS: &[&str] = &[
    "tests/interop/grpcurl.sh",
    "tests/interop/python.sh",
    "tests/interop/node.sh",
    "tests/interop/prometheus.sh",
];

/// The API contract checks and the baseline they compare against (see `proto/buf.yaml`).
const BUF_SCRIPT: &str = "scripts/buf.sh";

/// The cargo-fuzz targets for the gateway's parsers of untrusted input (see `fuzz/`).
const FUZZ_SCRIPT: &str = "scripts/fuzz.sh";

/// How long each fuzz target runs: long enough to shake out shallow panics in every target
/// on every change, short enough for every run (four targets, about a minute in all).
const FUZZ_SECONDS_ENV: &str = "PALISADE_FUZZ_SECONDS";
const FUZZ_SECONDS_DEFAULT: u64 = 15;

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "test" => test(),
        "ci" => ci(),
        "api-baseline" => bash(BUF_SCRIPT, &["baseline"]),
        _ => Err("usage: cargo xtask <test|ci|api-baseline>".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask {task}: {message}");
            ExitCode::FAILURE
        }
    }
}

fn ci() -> Result<(), String> {
    if std::env::var_os("CI").is_some() && std::env::var_os("PALISADE_TEST_POSTGRES_URL").is_none()
    {
        return Err(
            "CI must run the PostgreSQL variant: set PALISADE_TEST_POSTGRES_URL".to_owned(),
        );
    }
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    test()
}

fn test() -> Result<(), String> {
    // Read first, so a bad value fails the run before the long part, not after it.
    let fuzz_seconds = fuzz_seconds()?;
    bash(BUF_SCRIPT, &["check"])?;
    run(cargo().args(["test", "--workspace", "--no-fail-fast"]))?;
    run(cargo().args(["build", "--package", "palisade"]))?;
    // Every script runs even when an earlier one failed, so one run shows every result.
    let mut failed: Vec<&str> = INTEROP_SCRIPTS
        .iter()
        .copied()
        .filter(|script| bash(script, &[]).is_err())
        .collect();
    match fuzz_seconds {
        0 => eprintln!("fuzz: skipped ({FUZZ_SECONDS_ENV}=0)"),
        seconds => {
            if bash(FUZZ_SCRIPT, &[&seconds.to_string()]).is_err() {
                failed.push(FUZZ_SCRIPT);
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("scripts failed: {}", failed.join(", ")))
    }
}

/// Seconds per fuzz target from [`FUZZ_SECONDS_ENV`]; `0` (skip) is for quick local runs and
/// refused in CI, which must always fuzz.
fn fuzz_seconds() -> Result<u64, String> {
    let seconds = match std::env::var(FUZZ_SECONDS_ENV) {
        Ok(value) => value.trim().parse().map_err(|_| {
            format!("{FUZZ_SECONDS_ENV}={value:?} is not a whole number of seconds")
        })?,
        Err(_) => FUZZ_SECONDS_DEFAULT,
    };
    if seconds == 0 && std::env::var_os("CI").is_some() {
        return Err(format!(
            "CI never skips the fuzz targets: unset {FUZZ_SECONDS_ENV}"
        ));
    }
    Ok(seconds)
}

fn bash(script: &str, args: &[&str]) -> Result<(), String> {
    run(Command::new("bash")
        .arg(root().join(script))
        .args(args)
        .current_dir(root()))
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    command.current_dir(root());
    command
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(command: &mut Command) -> Result<(), String> {
    eprintln!("+ {command:?}");
    let status = command
        .status()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed with {status}"))
    }
}
