//! `DATA/manifest`: the data directory's format version and shard count.
//!
//! Written once when the directory is created (atomically: temp file, fsync,
//! rename, fsync of the directory) and checked on every open, so a server
//! started with another shard count fails loudly instead of routing rooms to
//! the wrong shard.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Data directory format written by this build.
pub const DATA_FORMAT: u32 = 1;
const FILE: &str = "manifest";

/// The contents of a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Manifest {
    /// Data directory format.
    pub format: u32,
    /// Number of shards, fixed for the directory's life.
    pub shards: u32,
}

impl Manifest {
    fn encode(&self) -> String {
        format!(
            "rookery-data\nformat={}\nshards={}\n",
            self.format, self.shards
        )
    }

    fn decode(text: &str) -> Result<Manifest> {
        let mut lines = text.lines();
        if lines.next() != Some("rookery-data") {
            return Err(Error::Manifest("not a rookery manifest".into()));
        }
        let mut field = |name: &str| -> Result<u32> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| Error::Manifest(format!("missing or bad `{name}`")))
        };
        Ok(Manifest {
            format: field("format")?,
            shards: field("shards")?,
        })
    }

    /// Reads the manifest of `dir`, if there is one.
    pub fn read(dir: &Path) -> Result<Option<Manifest>> {
        let path = dir.join(FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Manifest::decode(&text).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// Reads the manifest, or creates it with `shards` if the directory has
    /// none, and checks it matches.
    pub fn ensure(dir: &Path, shards: u32) -> Result<Manifest> {
        let want = Manifest {
            format: DATA_FORMAT,
            shards,
        };
        match Manifest::read(dir)? {
            Some(m) if m.format != DATA_FORMAT => Err(Error::Manifest(format!(
                "data directory has format {}, this build reads format {DATA_FORMAT}",
                m.format
            ))),
            Some(m) if m.shards != shards => Err(Error::Manifest(format!(
                "data directory was created with {} shards, configured {shards}; \
                 start with --shards {} or use a new directory",
                m.shards, m.shards
            ))),
            Some(m) => Ok(m),
            None => {
                want.write(dir)?;
                Ok(want)
            }
        }
    }

    fn write(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join("manifest.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(self.encode().as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, dir.join(FILE)).map_err(|e| Error::io(dir, e))?;
        crate::log::sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Manifest::ensure(dir.path(), 4).unwrap().shards, 4);
        assert_eq!(
            Manifest::ensure(dir.path(), 4).unwrap(),
            Manifest {
                format: DATA_FORMAT,
                shards: 4
            }
        );
        let err = Manifest::ensure(dir.path(), 2).unwrap_err();
        assert!(
            matches!(err, Error::Manifest(ref m) if m.contains("created with 4 shards")),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "hello").unwrap();
        assert!(matches!(
            Manifest::ensure(dir.path(), 1),
            Err(Error::Manifest(_))
        ));
        std::fs::write(dir.path().join(FILE), "rookery-data\nformat=9\nshards=1\n").unwrap();
        assert!(
            matches!(Manifest::ensure(dir.path(), 1), Err(Error::Manifest(ref m)) if m.contains("format 9"))
        );
    }
}
