//! The demo room's files (`node.demo_dir`, built by `scripts/run.sh` into
//! `clients/demo/dist`), read once at start and served at `/demo/` by the
//! guest through `chorus::asset`. Bounded: at most [`MAX_FILES`] files of
//! [`MAX_BYTES`] together; nothing outside the directory is reachable (names
//! are looked up in the map, never joined to a path).
//!
//! Beside them, the node's own pages: names that start with `/` (which no
//! file name has) are built into the host binary ([`BUILT_IN`]), so they are
//! not in the guest's data image, which every process slot maps.

use std::collections::HashMap;
use std::path::Path;

/// Files kept at most.
const MAX_FILES: usize = 64;
/// Bytes kept at most, all files together.
const MAX_BYTES: usize = 16 * 1024 * 1024;

/// Pages compiled into the host: `(name, content type, bytes)`.
const BUILT_IN: &[(&str, &str, &[u8])] = &[(
    "/dashboard",
    "text/html; charset=utf-8",
    include_bytes!("dashboard.html"),
)];

/// Static files by name (`index.html`, `demo.js`, …).
#[derive(Default)]
pub struct Assets {
    files: HashMap<String, (&'static str, Vec<u8>)>,
}

/// The content type of a file name.
fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        _ => "application/octet-stream",
    }
}

impl Assets {
    /// Reads the regular files of `dir` (not its subdirectories). A missing
    /// directory is no assets, and a warning saying how to build them.
    pub fn load(dir: &str) -> Assets {
        let mut assets = Assets::default();
        if dir.is_empty() {
            return assets;
        }
        let listing = match std::fs::read_dir(Path::new(dir)) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(
                    "node.demo_dir {dir}: {e}; /demo is not served (scripts/run.sh builds it)"
                );
                return assets;
            }
        };
        let mut total = 0;
        for entry in listing.flatten() {
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            if !path.is_file() {
                continue;
            }
            if assets.files.len() == MAX_FILES {
                tracing::warn!(
                    "node.demo_dir {dir}: more than {MAX_FILES} files; the rest is not served"
                );
                break;
            }
            match std::fs::read(&path) {
                Ok(bytes) if total + bytes.len() <= MAX_BYTES => {
                    total += bytes.len();
                    assets.files.insert(name.clone(), (content_type(&name), bytes));
                }
                Ok(_) => tracing::warn!(
                    "node.demo_dir {dir}: {name} would pass {MAX_BYTES} bytes of demo files; not served"
                ),
                Err(e) => tracing::warn!("node.demo_dir {dir}: cannot read {name}: {e}"),
            }
        }
        tracing::info!(
            dir,
            files = assets.files.len(),
            bytes = total,
            "demo room files loaded"
        );
        assets
    }

    /// `content-type\n` then the bytes of file `name` (or of the built-in
    /// page `name`, when it starts with `/`), or nothing.
    pub fn get(&self, name: &str) -> Vec<u8> {
        let found = if name.starts_with('/') {
            BUILT_IN
                .iter()
                .find(|(n, _, _)| *n == name)
                .map(|(_, ct, bytes)| (*ct, *bytes))
        } else {
            self.files
                .get(name)
                .map(|(ct, bytes)| (*ct, bytes.as_slice()))
        };
        match found {
            Some((ct, bytes)) => {
                let mut out = Vec::with_capacity(ct.len() + 1 + bytes.len());
                out.extend_from_slice(ct.as_bytes());
                out.push(b'\n');
                out.extend_from_slice(bytes);
                out
            }
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_files_of_the_directory_by_name_only() {
        let dir = std::env::temp_dir().join(format!("chorus-assets-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).expect("temp dir");
        std::fs::write(dir.join("index.html"), "<p>hi</p>").expect("write");
        std::fs::write(dir.join("sub").join("x.js"), "no").expect("write");
        let assets = Assets::load(dir.to_str().unwrap_or_default());
        assert_eq!(
            assets.get("index.html"),
            b"text/html; charset=utf-8\n<p>hi</p>"
        );
        assert!(assets.get("sub/x.js").is_empty());
        assert!(assets.get("../index.html").is_empty());
        assert!(assets.get("sub").is_empty());
        assert!(Assets::load("/nonexistent/chorus")
            .get("index.html")
            .is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn built_in_pages_are_named_with_a_slash_and_never_read_from_the_directory() {
        let dir = std::env::temp_dir().join(format!("chorus-assets-b-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("dashboard"), "not the page").expect("write");
        let assets = Assets::load(dir.to_str().unwrap_or_default());
        let page = assets.get("/dashboard");
        assert!(page.starts_with(b"text/html; charset=utf-8\n<!doctype html>"));
        assert_eq!(
            assets.get("dashboard"),
            b"application/octet-stream\nnot the page"
        );
        assert!(Assets::default().get("/dashboard").len() > 1000);
        assert!(Assets::default().get("/nothing").is_empty());
        assert!(Assets::default().get("/").is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
