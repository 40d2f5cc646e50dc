//! TEMPORARY placeholder until the real meta module lands (same session).
use crate::error::Result;
/// Metadata database.
pub struct Meta { _db: redb::Database }
impl Meta {
    /// Opens.
    pub fn open(path: &std::path::Path, cache_bytes: usize) -> Result<Meta> {
        Ok(Meta { _db: redb::Database::builder().set_cache_size(cache_bytes).create(path)? })
    }
    /// Advances.
    pub fn advance_last_seq(&self, _u: &[(u64, u64)], _durable: bool) -> Result<()> { Ok(()) }
}
