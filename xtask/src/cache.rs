//! The artifact cache outside the repository (`$RMNIC_CACHE`, default `~/.cache/rmnic`).
//!
//! Heavy artifacts live in directories named by a hash of every input that shapes them, and
//! count as built only once a `complete` stamp is written, so an interrupted build is redone
//! rather than trusted.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::deps;

/// Root of the cache.
pub fn root() -> PathBuf {
    std::env::var_os("RMNIC_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| deps::home().join(".cache/rmnic"))
}

/// Hash of a list of named inputs; the name is part of the hash so that moving bytes from
/// one input to another changes it.
#[derive(Default)]
pub struct InputHash(Sha256);

impl InputHash {
    /// Adds a named byte string.
    pub fn bytes(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.0.update((name.len() as u64).to_le_bytes());
        self.0.update(name.as_bytes());
        self.0.update((data.len() as u64).to_le_bytes());
        self.0.update(data);
        self
    }

    /// Adds a file's contents under `name` (a repository-relative name, so the hash does not
    /// depend on where the checkout lives).
    pub fn file(&mut self, name: &str, path: &Path) -> Result<&mut Self> {
        let data = fs::read(path).with_context(|| format!("Cannot read {}", path.display()))?;
        Ok(self.bytes(name, &data))
    }

    /// Adds every file below `dir` (sorted, relative names), skipping build droppings.
    pub fn tree(&mut self, dir: &Path) -> Result<&mut Self> {
        let mut files = Vec::new();
        collect(dir, dir, &mut files)?;
        files.sort();
        for rel in files {
            let data = fs::read(dir.join(&rel))?;
            self.bytes(&rel.to_string_lossy(), &data);
        }
        Ok(self)
    }

    /// The first 16 hex digits of the digest.
    pub fn finish(&self) -> String {
        let digest = self.0.clone().finalize();
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }
}

fn collect(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("Cannot list {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || name == "target" {
            continue;
        }
        if entry.file_type()?.is_dir() {
            collect(base, &path, out)?;
        } else if !is_build_output(&name) {
            out.push(path.strip_prefix(base)?.to_path_buf());
        }
    }
    Ok(())
}

fn is_build_output(name: &str) -> bool {
    [
        ".o", ".ko", ".mod", ".mod.c", ".cmd", ".symvers", ".order", ".rmeta",
    ]
    .iter()
    .any(|suffix| name.ends_with(suffix))
}

/// A cache entry: a directory that holds a finished artifact once `complete` exists.
pub struct Entry {
    /// The entry's directory.
    pub dir: PathBuf,
}

impl Entry {
    /// The entry `kind/hash` below the cache root.
    pub fn new(kind: &str, hash: &str) -> Self {
        Self {
            dir: root().join(kind).join(hash),
        }
    }

    /// Whether a previous build finished.
    pub fn is_complete(&self) -> bool {
        self.dir.join("complete").exists()
    }

    /// Empties the directory for a fresh build.
    pub fn reset(&self) -> Result<()> {
        if self.dir.exists() {
            fs::remove_dir_all(&self.dir)
                .with_context(|| format!("Cannot clear {}", self.dir.display()))?;
        }
        fs::create_dir_all(&self.dir)
            .with_context(|| format!("Cannot create {}", self.dir.display()))
    }

    /// Marks the build finished.
    pub fn mark_complete(&self) -> Result<()> {
        fs::write(self.dir.join("complete"), b"")
            .with_context(|| format!("Cannot stamp {}", self.dir.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::InputHash;

    #[test]
    fn hash_depends_on_contents_and_names_not_on_location() {
        let a = std::env::temp_dir().join(format!("rmnic-hash-a-{}", std::process::id()));
        let b = std::env::temp_dir().join(format!("rmnic-hash-b-{}", std::process::id()));
        for dir in [&a, &b] {
            std::fs::create_dir_all(dir.join("sub")).expect("temp dir");
            std::fs::write(dir.join("sub/f.txt"), b"same").expect("write");
        }
        let hash = |dir: &std::path::Path| {
            let mut h = InputHash::default();
            h.tree(dir).expect("tree");
            h.file("f", &dir.join("sub/f.txt")).expect("file");
            h.finish()
        };
        assert_eq!(hash(&a), hash(&b), "two checkouts of the same inputs");
        std::fs::write(b.join("sub/f.txt"), b"different").expect("write");
        assert_ne!(hash(&a), hash(&b), "changed contents");
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
    }
}
