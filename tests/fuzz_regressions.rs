//! Replays the fuzz targets' inputs through their properties, without libFuzzer: every saved crash
//! of `fuzz/regressions/<target>/` (which must stay fixed) and every seed of `fuzz/corpus/<target>/`.
//! The properties are compiled in from `fuzz/src/lib.rs`, the very code the fuzz targets run
//! (docs/fuzzing.md).

#[path = "../fuzz/src/lib.rs"]
mod fuzz_properties;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

type Property = fn(&[u8]);

const TARGETS: [(&str, Property); 4] = [
    ("worker_frame", fuzz_properties::worker_frame),
    ("json_proto", fuzz_properties::json_proto),
    ("manifest", fuzz_properties::manifest),
    ("otlp_span", fuzz_properties::otlp_span),
];

/// Replays every file under `dir/<target>/`; returns how many ran and the failures (file: panic).
fn replay(dir: &Path) -> (usize, Vec<String>) {
    let mut ran = 0;
    let mut failures = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (ran, failures);
    };
    for entry in entries {
        let entry = entry.expect("readable directory entry");
        let path = entry.path();
        if !path.is_dir() {
            continue; // a README
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((_, property)) = TARGETS.iter().find(|(target, _)| *target == name) else {
            panic!("{} names no fuzz target", path.display());
        };
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&path)
            .expect("readable target directory")
            .map(|e| e.expect("readable directory entry").path())
            .collect();
        inputs.sort();
        for input in inputs {
            let bytes = std::fs::read(&input).expect("readable input");
            ran += 1;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| property(&bytes))) {
                let message = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("(no message)");
                failures.push(format!("{}: {message}", input.display()));
            }
        }
    }
    (ran, failures)
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

#[test]
fn saved_fuzz_crashes_stay_fixed() {
    let (_, failures) = replay(&fuzz_dir().join("regressions"));
    assert!(
        failures.is_empty(),
        "inputs that once crashed a fuzz target crash again:\n{}",
        failures.join("\n")
    );
}

#[test]
fn fuzz_seeds_satisfy_the_properties() {
    let (ran, failures) = replay(&fuzz_dir().join("corpus"));
    assert!(
        ran >= TARGETS.len(),
        "expected seeds in fuzz/corpus/<target>/, found {ran}"
    );
    assert!(
        failures.is_empty(),
        "seeds violate a fuzz property:\n{}",
        failures.join("\n")
    );
}
