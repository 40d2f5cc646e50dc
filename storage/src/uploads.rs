//! Uploaded files on disk: `uploads/{2 hex}/{32 hex}` for a file and
//! `….thumb` for its thumbnail, under the data directory. The 256
//! subdirectories are made (and synced into `uploads/`) at open; a file
//! and its thumbnail are written first under `uploads/tmp/`, synced, then
//! renamed into place and their directory synced: a placed file is whole,
//! and a crash leaves at most temporary files (removed at the next open)
//! or placed files `meta.redb` has no row for (the engine removes those at
//! start). What is known of
//! each file is [`crate::meta::Upload`]'s.
//!
//! Calls block (file I/O): run them off a reactor.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::log::sync_dir;

/// Bytes of a file's beginning kept for sniffing its content type.
pub const SNIFF_BYTES: usize = 8192;

/// The uploads directory of a data directory.
#[derive(Debug, Clone)]
pub struct UploadFiles {
    dir: PathBuf,
}

impl UploadFiles {
    /// Opens (creating) `data_dir/uploads` and its subdirectories, and
    /// removes what a crash left in its `tmp`.
    pub fn open(data_dir: &Path) -> Result<UploadFiles> {
        let dir = data_dir.join("uploads");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut made = false;
        for sub in 0..=255u8 {
            let path = dir.join(format!("{sub:02x}"));
            if !path.is_dir() {
                std::fs::create_dir(&path).map_err(|e| Error::io(&path, e))?;
                made = true;
            }
        }
        if made {
            sync_dir(&dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        for entry in std::fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, e))? {
            let path = entry.map_err(|e| Error::io(&tmp, e))?.path();
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(UploadFiles { dir })
    }

    /// Where upload `id`'s file is.
    pub fn path(&self, id: u128) -> PathBuf {
        let hex = format!("{id:032x}");
        self.dir.join(&hex[..2]).join(hex)
    }

    /// Where upload `id`'s thumbnail is.
    pub fn thumb_path(&self, id: u128) -> PathBuf {
        self.path(id).with_extension("thumb")
    }

    /// A new temporary file to write an upload into.
    pub fn incoming(&self) -> Result<Incoming> {
        let path = self
            .dir
            .join("tmp")
            .join(format!("{:032x}", rand::random::<u128>()));
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(Incoming {
            file: Some(file),
            path,
            thumb: None,
            bytes: 0,
            hasher: Sha256::new(),
            head: Vec::new(),
        })
    }

    /// Syncs `incoming` and moves it into place as upload `id` (with its
    /// thumbnail, if any); the file's SHA-256. On failure nothing of it is
    /// left in place (its temporary files go when `incoming` drops).
    pub fn place(
        &self,
        mut incoming: Incoming,
        id: u128,
        thumb: Option<&[u8]>,
    ) -> Result<[u8; 32]> {
        let file = incoming
            .file
            .as_ref()
            .expect("an incoming file is placed once");
        file.sync_all().map_err(|e| Error::io(&incoming.path, e))?;
        let to = self.path(id);
        let parent = to.parent().expect("a file has a directory");
        if let Some(thumb) = thumb {
            let tmp = incoming.path.with_extension("thumb");
            incoming.thumb = Some(tmp.clone());
            write_synced(&tmp, thumb)?;
            let at = self.thumb_path(id);
            std::fs::rename(&tmp, &at).map_err(|e| Error::io(&at, e))?;
            incoming.thumb = None;
        }
        if let Err(e) = std::fs::rename(&incoming.path, &to) {
            let _ = std::fs::remove_file(self.thumb_path(id));
            return Err(Error::io(&to, e));
        }
        incoming.file = None; // placed: nothing to remove when it drops
        sync_dir(parent)?;
        Ok(std::mem::take(&mut incoming.hasher).finalize().into())
    }

    /// Removes upload `id`'s file and thumbnail (those that exist).
    pub fn remove(&self, id: u128) -> Result<()> {
        for path in [self.path(id), self.thumb_path(id)] {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Ok(())
    }

    /// The ids of the files and thumbnails placed here (for a check
    /// against `meta.redb`).
    pub fn placed(&self) -> Result<Vec<u128>> {
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| Error::io(&self.dir, e))? {
            let sub = entry.map_err(|e| Error::io(&self.dir, e))?.path();
            if !sub.is_dir() || sub.file_name().is_some_and(|n| n == "tmp") {
                continue;
            }
            for file in std::fs::read_dir(&sub).map_err(|e| Error::io(&sub, e))? {
                let path = file.map_err(|e| Error::io(&sub, e))?.path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let name = name.strip_suffix(".thumb").unwrap_or(name);
                if name.len() == 32 {
                    if let Ok(id) = u128::from_str_radix(name, 16) {
                        ids.push(id);
                    }
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

/// `bytes` written to `path` and synced (its directory is synced by the
/// caller).
fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).map_err(|e| Error::io(path, e))?;
    file.write_all(bytes).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))
}

/// An upload being written: its temporary file, size, running hash and
/// first [`SNIFF_BYTES`]. Dropped before it is placed, the file is removed.
#[derive(Debug)]
pub struct Incoming {
    file: Option<File>,
    path: PathBuf,
    /// Its thumbnail's temporary file, while one is written.
    thumb: Option<PathBuf>,
    bytes: u64,
    hasher: Sha256,
    head: Vec<u8>,
}

impl Incoming {
    /// Appends `chunk`.
    pub fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let file = self.file.as_mut().expect("written before it is placed");
        file.write_all(chunk)
            .map_err(|e| Error::io(&self.path, e))?;
        self.hasher.update(chunk);
        let room = SNIFF_BYTES.saturating_sub(self.head.len());
        self.head.extend_from_slice(&chunk[..room.min(chunk.len())]);
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    /// Bytes written.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The first bytes written (at most [`SNIFF_BYTES`]).
    pub fn head(&self) -> &[u8] {
        &self.head
    }

    /// The temporary file (to read it whole, for a thumbnail).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
        if let Some(thumb) = &self.thumb {
            let _ = std::fs::remove_file(thumb);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_placed_whole_and_a_dropped_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let files = UploadFiles::open(dir.path()).unwrap();
        let mut inc = files.incoming().unwrap();
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in data.chunks(3000) {
            inc.write(chunk).unwrap();
        }
        assert_eq!(inc.bytes(), 20_000);
        assert_eq!(inc.head(), &data[..SNIFF_BYTES]);
        let id = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdefu128;
        let sha = files.place(inc, id, Some(b"thumb")).unwrap();
        assert_eq!(sha, <[u8; 32]>::from(Sha256::digest(&data)));
        assert_eq!(std::fs::read(files.path(id)).unwrap(), data);
        assert_eq!(std::fs::read(files.thumb_path(id)).unwrap(), b"thumb");
        assert!(files
            .path(id)
            .ends_with("01/0123456789abcdef0123456789abcdef"));
        assert_eq!(files.placed().unwrap(), [id]);

        let mut dropped = files.incoming().unwrap();
        dropped.write(b"half").unwrap();
        let tmp = dropped.path().to_path_buf();
        assert!(tmp.exists());
        drop(dropped);
        assert!(!tmp.exists(), "an upload not placed leaves no file");

        files.remove(id).unwrap();
        files.remove(id).unwrap();
        assert!(!files.path(id).exists() && !files.thumb_path(id).exists());
        assert!(files.placed().unwrap().is_empty());
        // A thumbnail alone (a crash between its rename and the file's)
        // is listed, to be removed.
        std::fs::write(files.thumb_path(id), b"t").unwrap();
        assert_eq!(files.placed().unwrap(), [id]);
    }

    #[test]
    fn opening_clears_what_a_crash_left_in_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let files = UploadFiles::open(dir.path()).unwrap();
        let mut inc = files.incoming().unwrap();
        inc.write(b"cut short").unwrap();
        let tmp = inc.path().to_path_buf();
        std::mem::forget(inc); // as a crash would: no drop
        assert!(tmp.exists());
        UploadFiles::open(dir.path()).unwrap();
        assert!(!tmp.exists());
    }
}
