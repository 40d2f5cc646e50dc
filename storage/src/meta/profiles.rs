//! The user directory: each user's profile (a display name, a status
//! text and an avatar) and an index of the words of users' names, by
//! which users are found by prefix ([`Meta::search_users`]).
//!
//! An avatar is an image the user uploaded (one with a thumbnail); while
//! it is their avatar it is held as a message holds an upload, by the row
//! ([`AVATAR_ROOM`], user), so nothing frees it. The one it replaces is
//! held no more (the sweep of uploads nothing holds removes it).
//!
//! Invariant: `name_words` holds `(w, user)` exactly for the words `w` of
//! the user's name and display name ([`words_of`]), written in the
//! transaction that writes either. A search reads a bounded number of
//! index rows per page, whatever the number of users.

use redb::{ReadableTable, WriteTransaction};

use super::*;

/// Bytes of a display name, at most.
pub const DISPLAY_NAME_BYTES_MAX: usize = 64;

/// Bytes of a status text, at most.
pub const STATUS_BYTES_MAX: usize = 140;

/// Bytes of one indexed word, at most (longer words are cut, at a
/// character boundary: a prefix search still finds them).
pub const WORD_BYTES_MAX: usize = 32;

/// Words indexed per user, at most (of the name first, then the display
/// name).
pub const WORDS_PER_USER_MAX: usize = 8;

/// Index rows one page of a search reads, at most: a page may be short
/// (and still have a `next`) when few of the rows read match every word.
pub const SEARCH_SCAN_ROWS_MAX: usize = 4096;

/// A user as the directory shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// The user's id.
    pub user: u64,
    /// Their name (the registered name, or the JWT subject).
    pub name: String,
    /// Whether a backend vouches for them (a JWT subject).
    pub external: bool,
    /// The name they show ("" when none).
    pub display_name: String,
    /// Their status text ("" when none).
    pub status: String,
    /// When the profile last changed (ms; 0: never).
    pub updated_ms: u64,
    /// Their avatar: an image upload of theirs (`None`: none).
    pub avatar: Option<u128>,
    /// When they were last active (ms; 0: never seen), as
    /// [`Meta::note_seen`] was told.
    pub last_seen_ms: u64,
}

/// What a profile edit changes ([`Meta::edit_profile`]): `None` keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileEdit<'a> {
    /// The name they show ("" clears it).
    pub display_name: Option<&'a str>,
    /// Their status text ("" clears it).
    pub status: Option<&'a str>,
    /// Their avatar: `Some(None)` clears it, `Some(Some(id))` makes upload
    /// `id` (an image of theirs, with a thumbnail) their avatar.
    pub avatar: Option<Option<u128>>,
}

/// Where a page of a search stopped: the index row (word, user) last read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchCursor {
    /// The indexed word of the row.
    pub word: String,
    /// The user of the row.
    pub user: u64,
}

/// A page of a search's results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SearchPage {
    /// The users found, each once, ordered by the first of their words
    /// that begins with the query's longest word (then by id).
    pub users: Vec<Profile>,
    /// Where the next page starts; `None` when nothing is left.
    pub next: Option<SearchCursor>,
}

impl Meta {
    /// User `user`'s profile, if the user exists.
    pub fn profile(&self, user: u64) -> Result<Option<Profile>> {
        self.read(|txn| {
            let (users, profiles) = (txn.open_table(USERS)?, txn.open_table(PROFILES)?);
            let extras = (txn.open_table(AVATARS)?, txn.open_table(LAST_SEEN)?);
            profile_in(&users, &profiles, &extras, user)
        })
    }

    /// Every profile that was ever set, by user id (an export).
    pub fn profiles(&self) -> Result<Vec<Profile>> {
        self.read(|txn| {
            let (users, profiles) = (txn.open_table(USERS)?, txn.open_table(PROFILES)?);
            let extras = (txn.open_table(AVATARS)?, txn.open_table(LAST_SEEN)?);
            let ids: Vec<u64> = profiles
                .iter()?
                .map(|row| Ok(row?.0.value()))
                .collect::<Result<_>>()?;
            let mut out = Vec::with_capacity(ids.len());
            for user in ids {
                out.extend(profile_in(&users, &profiles, &extras, user)?);
            }
            Ok(out)
        })
    }

    /// Sets user `user`'s display name and status text (each may be "":
    /// none), re-indexing the words of their names.
    ///
    /// Errors: `NotFound` for an unknown user; `InvalidInput` for a text
    /// over its bound or holding a control or direction character.
    pub fn set_profile(
        &self,
        user: u64,
        display_name: &str,
        status: &str,
        now_ms: u64,
    ) -> Result<()> {
        let edit = ProfileEdit {
            display_name: Some(display_name),
            status: Some(status),
            avatar: None,
        };
        self.edit_profile(user, &edit, now_ms).map(drop)
    }

    /// Changes what is given of user `user`'s profile and keeps the rest,
    /// in one transaction (two edits at once never undo each other);
    /// returns the profile as written.
    ///
    /// Errors: as [`Meta::set_profile`]; `NotFound` for an avatar that is
    /// no upload of theirs, `InvalidInput` for one that is not an image
    /// with a thumbnail.
    pub fn edit_profile(&self, user: u64, edit: &ProfileEdit<'_>, now_ms: u64) -> Result<Profile> {
        let (display_name, status) = (edit.display_name, edit.status);
        check_profile(display_name.unwrap_or(""), status.unwrap_or(""))?;
        self.write(|txn| {
            let current = {
                let (users, profiles) = (txn.open_table(USERS)?, txn.open_table(PROFILES)?);
                let extras = (txn.open_table(AVATARS)?, txn.open_table(LAST_SEEN)?);
                profile_in(&users, &profiles, &extras, user)?
                    .ok_or_else(|| Error::NotFound(format!("user {user}")))?
            };
            let display_name = display_name.unwrap_or(&current.display_name).to_owned();
            let status = status.unwrap_or(&current.status).to_owned();
            set_profile_in(txn, user, &display_name, &status, now_ms)?;
            let avatar = edit.avatar.unwrap_or(current.avatar);
            // Only a new avatar is checked: an edit of the rest keeps the
            // one they have, even one whose upload is gone since.
            if let Some(id) = avatar.filter(|&id| current.avatar != Some(id)) {
                check_avatar(txn, user, id)?;
            }
            set_avatar_in(txn, user, avatar)?;
            Ok(Profile {
                display_name,
                status,
                updated_ms: now_ms,
                avatar,
                ..current
            })
        })
    }

    /// Records when users were last active, `(user, ms)` (a time never
    /// moves back; unknown users are skipped), in one durable transaction
    /// (the server calls it at most every few seconds a shard; commits
    /// that are not durable would keep redb from reclaiming pages while
    /// nothing else commits).
    pub fn note_seen(&self, seen: &[(u64, u64)]) -> Result<()> {
        if seen.is_empty() {
            return Ok(());
        }
        self.write(|txn| {
            let users = txn.open_table(USERS)?;
            let mut table = txn.open_table(LAST_SEEN)?;
            for &(user, ms) in seen {
                let known = users.get(user)?.is_some();
                let later = table.get(user)?.is_none_or(|old| old.value() < ms);
                if known && later {
                    table.insert(user, ms)?;
                }
            }
            Ok(())
        })
    }

    /// A page of the users whose names have, for every word of `query`, a
    /// word beginning with it (in any case): `len` at most, after `after`,
    /// reading at most [`SEARCH_SCAN_ROWS_MAX`] index rows.
    ///
    /// Errors: `InvalidInput` for a query with no word.
    pub fn search_users(
        &self,
        query: &str,
        after: Option<&SearchCursor>,
        len: usize,
    ) -> Result<SearchPage> {
        let mut wanted = query_words(query);
        if wanted.is_empty() || wanted.len() > QUERY_WORDS_MAX {
            return Err(Error::InvalidInput(format!(
                "the query has {} words: 1 to {QUERY_WORDS_MAX}",
                wanted.len()
            )));
        }
        // The longest word is read from the index; the rest are checked.
        wanted.sort_by_key(|w| std::cmp::Reverse(w.len()));
        let first = wanted[0].clone();
        self.read(|txn| {
            let (words, users, profiles) = (
                txn.open_table(NAME_WORDS)?,
                txn.open_table(USERS)?,
                txn.open_table(PROFILES)?,
            );
            let extras = (txn.open_table(AVATARS)?, txn.open_table(LAST_SEEN)?);
            let start = match after {
                Some(c) if c.word.as_str() >= first.as_str() => (c.word.clone(), c.user),
                _ => (first.clone(), 0),
            };
            let mut page = SearchPage {
                users: Vec::new(),
                next: None,
            };
            let (mut scanned, mut last_read) = (0, None);
            for row in words.range((start.0.as_str(), start.1)..)? {
                let (key, _) = row?;
                let (word, user) = key.value();
                if !word.starts_with(first.as_str()) {
                    break;
                }
                if after.is_some_and(|c| (c.word.as_str(), c.user) == (word, user)) {
                    continue; // the cursor's own row was read by the last page
                }
                if page.users.len() == len || scanned == SEARCH_SCAN_ROWS_MAX {
                    // More rows follow: the next page starts after the last
                    // one read.
                    page.next = last_read;
                    break;
                }
                scanned += 1;
                last_read = Some(SearchCursor {
                    word: word.to_owned(),
                    user,
                });
                // Names first: the avatar and last seen are read only for
                // the users the page shows.
                let Some(mut p) = names_in(&users, &profiles, user)? else {
                    return Err(Error::Database(format!("name_words names no user {user}")));
                };
                let theirs = words_of(&p.name, &p.display_name);
                let matches = |q: &String| theirs.iter().any(|w| w.starts_with(q.as_str()));
                // Each user once: at the first of their words the index row
                // is for.
                let first_of_theirs = theirs
                    .iter()
                    .filter(|w| w.starts_with(first.as_str()))
                    .min();
                if wanted.iter().all(matches) && first_of_theirs.map(String::as_str) == Some(word) {
                    with_extras(&mut p, &extras)?;
                    page.users.push(p);
                }
            }
            Ok(page)
        })
    }
}

/// Checks a display name and a status text as [`Meta::set_profile`] does.
///
/// Errors: `InvalidInput` for a text over its bound or holding a control
/// character.
pub fn check_profile(display_name: &str, status: &str) -> Result<()> {
    validate_text("display name", display_name, DISPLAY_NAME_BYTES_MAX)?;
    validate_text("status", status, STATUS_BYTES_MAX)
}

/// [`Meta::set_profile`] in `txn` (the texts checked).
pub(super) fn set_profile_in(
    txn: &WriteTransaction,
    user: u64,
    display_name: &str,
    status: &str,
    now_ms: u64,
) -> Result<()> {
    let name = name_of(txn, user)?.ok_or_else(|| Error::NotFound(format!("user {user}")))?;
    write_profile(txn, user, &name, display_name, status, now_ms)
}

/// User `user`'s name, if the user exists.
fn name_of(txn: &WriteTransaction, user: u64) -> Result<Option<String>> {
    let users = txn.open_table(USERS)?;
    let name = users.get(user)?.map(|row| row.value().0.to_owned());
    Ok(name)
}

/// A profile as the cluster recorded it: written even before its user is
/// (a node catching up applies each key's latest change in revision
/// order, so a profile set before its user's last change comes first);
/// the user's words are indexed when the user arrives ([`index_name`]
/// reads the stored display name).
pub(super) fn replicate_profile_in(
    txn: &WriteTransaction,
    user: u64,
    display_name: &str,
    status: &str,
    now_ms: u64,
    avatar: Option<u128>,
) -> Result<()> {
    set_avatar_in(txn, user, avatar)?;
    match name_of(txn, user)? {
        Some(name) => write_profile(txn, user, &name, display_name, status, now_ms),
        None => {
            let mut profiles = txn.open_table(PROFILES)?;
            profiles.insert(user, (display_name, status, now_ms))?;
            Ok(())
        }
    }
}

/// Writes the profile row of user `user` (named `name`) and re-indexes the
/// words of their names.
fn write_profile(
    txn: &WriteTransaction,
    user: u64,
    name: &str,
    display_name: &str,
    status: &str,
    now_ms: u64,
) -> Result<()> {
    let mut profiles = txn.open_table(PROFILES)?;
    let old = profiles
        .get(user)?
        .map_or_else(String::new, |row| row.value().0.to_owned());
    profiles.insert(user, (display_name, status, now_ms))?;
    drop(profiles);
    reindex(
        txn,
        user,
        &words_of(name, &old),
        &words_of(name, display_name),
    )
}

/// The indexed words of a user's name and display name (see [`fold`]):
/// no word twice, at most [`WORDS_PER_USER_MAX`].
pub fn words_of(name: &str, display_name: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for word in fold(name).into_iter().chain(fold(display_name)) {
        if !words.contains(&word) {
            words.push(word);
            if words.len() == WORDS_PER_USER_MAX {
                break;
            }
        }
    }
    words
}

/// Words of a query, at most: past it a query is refused rather than
/// read in part.
pub const QUERY_WORDS_MAX: usize = 8;

/// A query's words (see [`fold`]), no word twice.
pub fn query_words(query: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for word in fold(query) {
        if !words.contains(&word) {
            words.push(word);
        }
    }
    words
}

/// The words of `text` as the index keeps them: decomposed (NFD) with the
/// combining marks left out, so that accents do not matter (`Émile` is
/// `emile`, `İlker` is `ilker`, composed or not); lower case character by
/// character (a final sigma is a sigma); split at every character that is
/// not a letter or digit; each cut to [`WORD_BYTES_MAX`] at a character
/// boundary.
fn fold(text: &str) -> Vec<String> {
    use unicode_normalization::char::is_combining_mark;
    use unicode_normalization::UnicodeNormalization;
    let mut folded = String::with_capacity(text.len());
    for c in text.nfd().filter(|c| !is_combining_mark(*c)) {
        folded.extend(c.to_lowercase().map(|l| if l == 'ς' { 'σ' } else { l }));
    }
    folded
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            let cut = (0..=WORD_BYTES_MAX.min(w.len()))
                .rev()
                .find(|&i| w.is_char_boundary(i))
                .unwrap_or(0);
            w[..cut].to_owned()
        })
        .collect()
}

/// Indexes the words of a new user's name, with their display name if
/// their profile came first (see [`replicate_profile_in`]).
pub(super) fn index_name(txn: &WriteTransaction, user: u64, name: &str) -> Result<()> {
    let display = txn
        .open_table(PROFILES)?
        .get(user)?
        .map_or_else(String::new, |row| row.value().0.to_owned());
    reindex(txn, user, &[], &words_of(name, &display))
}

/// Rebuilds the whole index from the users and profiles (an upgrade).
pub(super) fn index_all(txn: &WriteTransaction) -> Result<u64> {
    let users: Vec<(u64, String)> = txn
        .open_table(USERS)?
        .iter()?
        .map(|row| {
            let (id, row) = row?;
            Ok((id.value(), row.value().0.to_owned()))
        })
        .collect::<Result<_>>()?;
    txn.open_table(NAME_WORDS)?.retain(|_, _| false)?;
    let profiles = txn.open_table(PROFILES)?;
    let mut words = txn.open_table(NAME_WORDS)?;
    for (user, name) in &users {
        let display = profiles
            .get(*user)?
            .map_or_else(String::new, |row| row.value().0.to_owned());
        for w in words_of(name, &display) {
            words.insert((w.as_str(), *user), ())?;
        }
    }
    Ok(users.len() as u64)
}

/// Replaces `user`'s index rows `old` with `new`.
fn reindex(txn: &WriteTransaction, user: u64, old: &[String], new: &[String]) -> Result<()> {
    let mut words = txn.open_table(NAME_WORDS)?;
    for w in old.iter().filter(|w| !new.contains(w)) {
        words.remove((w.as_str(), user))?;
    }
    for w in new {
        words.insert((w.as_str(), user), ())?;
    }
    Ok(())
}

/// `id` may be user `user`'s avatar: an upload of theirs, an image with
/// a thumbnail.
fn check_avatar(txn: &WriteTransaction, user: u64, id: u128) -> Result<()> {
    match uploads::upload_in(&txn.open_table(UPLOADS)?, id)? {
        Some(up) if up.owner == user && up.thumb_bytes > 0 => Ok(()),
        Some(up) if up.owner == user => Err(Error::InvalidInput(format!(
            "upload {id:032x} is not an image with a thumbnail: it cannot be an avatar"
        ))),
        _ => Err(Error::NotFound(format!("upload {id:032x}"))),
    }
}

/// Makes `avatar` user `user`'s avatar (`None`: none): the new one is held
/// when this file has it (a node's copy of another's profile may not), the
/// old one is held no more.
fn set_avatar_in(txn: &WriteTransaction, user: u64, avatar: Option<u128>) -> Result<()> {
    let old = txn.open_table(AVATARS)?.get(user)?.map(|v| v.value());
    if old == avatar {
        return Ok(());
    }
    if let Some(old) = old {
        uploads::unhold_in(txn, AVATAR_ROOM, user, old)?;
    }
    match avatar {
        Some(id) => {
            txn.open_table(AVATARS)?.insert(user, id)?;
            if txn.open_table(UPLOADS)?.get(id)?.is_some() {
                uploads::hold_in(txn, AVATAR_ROOM, user, id)?;
            }
        }
        None => {
            txn.open_table(AVATARS)?.remove(user)?;
        }
    }
    Ok(())
}

/// The tables a profile's avatar and last seen are in.
type Extras<A, S> = (A, S);

fn profile_in(
    users: &impl ReadableTable<u64, UserRow>,
    profiles: &impl ReadableTable<u64, ProfileRow>,
    extras: &Extras<impl ReadableTable<u64, u128>, impl ReadableTable<u64, u64>>,
    user: u64,
) -> Result<Option<Profile>> {
    let Some(mut p) = names_in(users, profiles, user)? else {
        return Ok(None);
    };
    with_extras(&mut p, extras)?;
    Ok(Some(p))
}

/// Fills in `p`'s avatar and last seen.
fn with_extras(
    p: &mut Profile,
    (avatars, seen): &Extras<impl ReadableTable<u64, u128>, impl ReadableTable<u64, u64>>,
) -> Result<()> {
    p.avatar = avatars.get(p.user)?.map(|v| v.value());
    p.last_seen_ms = seen.get(p.user)?.map_or(0, |v| v.value());
    Ok(())
}

/// A profile without its avatar and last seen (read by
/// [`with_extras`]).
fn names_in(
    users: &impl ReadableTable<u64, UserRow>,
    profiles: &impl ReadableTable<u64, ProfileRow>,
    user: u64,
) -> Result<Option<Profile>> {
    let Some(row) = users.get(user)? else {
        return Ok(None);
    };
    let (name, _, hash) = row.value();
    let (display_name, status, updated_ms) = match profiles.get(user)? {
        Some(p) => {
            let (d, s, t) = p.value();
            (d.to_owned(), s.to_owned(), t)
        }
        None => (String::new(), String::new(), 0),
    };
    Ok(Some(Profile {
        user,
        name: name.to_owned(),
        external: hash.is_none(),
        display_name,
        status,
        updated_ms,
        avatar: None,
        last_seen_ms: 0,
    }))
}

/// A profile text: at most `max` bytes, no control characters, and none
/// of the characters that reorder or hide the text around them (a name
/// that shows as another's).
fn validate_text(what: &str, text: &str, max: usize) -> Result<()> {
    if text.len() > max {
        return Err(Error::InvalidInput(format!(
            "the {what} is {} bytes, over {max}",
            text.len()
        )));
    }
    let hiding = |c: char| matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}');
    if text.chars().any(|c| c.is_control() || hiding(c)) {
        return Err(Error::InvalidInput(format!(
            "the {what} holds a control or direction character"
        )));
    }
    Ok(())
}
