//! The committed fuzz corpora (`fuzz/corpus/<target>/`), for replaying
//! them through the drivers in plain `cargo test`.

use std::fs;
use std::path::{Path, PathBuf};

/// The corpus files of `target`, sorted by name, with their contents.
///
/// # Panics
///
/// When the directory is missing or empty: losing the seeds must not make
/// a replay pass silently.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "fuzz", "corpus", target]
        .iter()
        .collect();
    let entries =
        fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus directory {}: {e}", dir.display()));
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let name = file_name(&path);
            let data = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (name, data)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus files in {}", dir.display());
    files
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Runs `run` on every corpus file of `target`, and on every prefix of each
/// seed. Returns the files.
pub fn replay(target: &str, run: fn(&[u8])) -> Vec<(String, Vec<u8>)> {
    let files = corpus(target);
    for (name, data) in &files {
        if name.starts_with("seed-") {
            for len in 0..data.len() {
                run(&data[..len]);
            }
        }
        run(data);
    }
    files
}
