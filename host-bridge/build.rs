//! Build script of the `chorus` binary.
//!
//! * Embeds the guest: the release build of `chorus-guest`
//!   (`<target>/wasm32-wasip1/release/chorus-guest.wasm`, or the file named
//!   by `CHORUS_EMBED_GUEST`) is copied to `$OUT_DIR/guest.wasm`, which
//!   `node.rs` includes, so one file is the whole node. Build the guest
//!   first (`scripts/lib.sh`'s `build_all` does); without it the binary is
//!   built with an empty guest and `chorus run` says how to get one.
//! * Reads the versions of the lunatic crates and wasmtime from Cargo.lock
//!   for `chorus version` and `chorus_build_info`.

use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(env_or_exit("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env_or_exit("OUT_DIR"));
    let workspace = manifest.parent().unwrap_or(&manifest).to_path_buf();

    println!("cargo:rerun-if-env-changed=CHORUS_EMBED_GUEST");
    let guest = match std::env::var_os("CHORUS_EMBED_GUEST") {
        Some(path) => PathBuf::from(path),
        None => target_dir(&out)
            .unwrap_or_else(|| workspace.join("target"))
            .join("wasm32-wasip1/release/chorus-guest.wasm"),
    };
    println!("cargo:rerun-if-changed={}", guest.display());
    let bytes = std::fs::read(&guest).unwrap_or_default();
    if bytes.is_empty() {
        println!(
            "cargo:warning=no guest at {}: this chorus has no embedded guest (build chorus-guest for wasm32-wasip1 first)",
            guest.display()
        );
    }
    if let Err(e) = std::fs::write(out.join("guest.wasm"), &bytes) {
        panic!("cannot write {}: {e}", out.join("guest.wasm").display());
    }

    let lock_path = workspace.join("Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock_path.display());
    let lock = std::fs::read_to_string(&lock_path).unwrap_or_default();
    for (crate_name, var) in [
        ("lunatic-process", "CHORUS_LUNATIC_VERSION"),
        ("wasmtime", "CHORUS_WASMTIME_VERSION"),
    ] {
        let version = locked_version(&lock, crate_name).unwrap_or_else(|| "unknown".into());
        println!("cargo:rustc-env={var}={version}");
    }
}

fn env_or_exit(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}

/// The target directory: `OUT_DIR` is `<target>/<profile>/build/<pkg>/out`.
fn target_dir(out: &Path) -> Option<PathBuf> {
    out.ancestors().nth(4).map(Path::to_path_buf)
}

/// The version of `name` in a Cargo.lock (the first entry of that name).
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == wanted {
            let version = lines.next()?.trim().strip_prefix("version = \"")?;
            return Some(version.trim_end_matches('"').to_string());
        }
    }
    None
}
