//! The index's shape: its fields, the analyzer that cuts text into terms,
//! the query that names a message, and the change each log record makes.
//! Pure: nothing here touches a file or a thread.
//!
//! Invariant: every indexed document is one live message, named by its
//! (room, seq), and holds only what the log holds for it; no field is
//! stored (the text shown comes from the log, read when a result is
//! shown), so a deleted message's words live only in the postings until
//! a merge rewrites them (see `indexer::Expunge`).

use rookery_storage::ArchivedRecord;
use std::ops::{Bound, RangeBounds};

use tantivy::query::{BooleanQuery, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED,
};
use tantivy::tokenizer::{
    AsciiFoldingFilter, LowerCaser, RemoveLongFilter, SimpleTokenizer, TextAnalyzer,
};
use tantivy::{Index, TantivyDocument, Term};

/// Changes whenever the fields or the analyzer change: an index of
/// another version is rebuilt (tantivy keeps the schema, not the
/// analyzer, so it could not tell on its own).
pub(crate) const SCHEMA_VERSION: u32 = 3;

/// The analyzer's name, registered on every opened index.
const ANALYZER: &str = "rookery-chat";

/// Longest term indexed, in bytes: a longer run (a pasted hash, base64)
/// is left out, as nobody types it into a search box.
pub(crate) const TERM_BYTES_MAX: usize = 40;

/// The index's fields: as few as a search needs, as each costs every
/// document's indexing and every merge's rewrite (a key term per message,
/// 10M distinct terms, cost more than the words; a delete finds its
/// message by two terms instead: its room's and its seq's, a seq being
/// shared by a message of every room that has one).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fields {
    /// Indexed for one room's queries and deletes, fast for many rooms'.
    pub room: Field,
    /// Indexed for deletes, fast for results and retention's ranges.
    pub seq: Field,
    /// The words: the body, and the names of the files it carries.
    pub body: Field,
}

/// The schema and its fields.
pub(crate) fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let text = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(ANALYZER)
            .set_index_option(IndexRecordOption::WithFreqs),
    );
    let fields = Fields {
        room: b.add_u64_field("room", INDEXED | FAST),
        seq: b.add_u64_field("seq", INDEXED | FAST),
        body: b.add_text_field("body", text),
    };
    (b.build(), fields)
}

/// The analyzer: words split at every character that is not a letter or
/// digit, over-long ones dropped, lower-cased, accents folded ("Café"
/// finds "cafe"). The same one cuts queries.
pub(crate) fn analyzer() -> TextAnalyzer {
    TextAnalyzer::builder(SimpleTokenizer::default())
        .filter(RemoveLongFilter::limit(TERM_BYTES_MAX + 1))
        .filter(LowerCaser)
        .filter(AsciiFoldingFilter)
        .build()
}

/// Registers the analyzer on `index` (tantivy does not persist it).
pub(crate) fn register(index: &Index) {
    index.tokenizers().register(ANALYZER, analyzer());
}

/// The terms of `text`, in order, repeats removed, at most `max`.
pub(crate) fn terms(text: &str, max: usize) -> Vec<String> {
    let mut analyzer = analyzer();
    let mut stream = analyzer.token_stream(text);
    let mut out: Vec<String> = Vec::new();
    while out.len() < max && stream.advance() {
        let t = &stream.token().text;
        if !out.iter().any(|o| o == t) {
            out.push(t.clone());
        }
    }
    out
}

/// Message `seq` of `room`: what a delete or an edit removes (the
/// intersection of two terms' postings).
pub(crate) fn message(fields: &Fields, room: u64, seq: u64) -> BooleanQuery {
    let term = |field, v| -> Box<dyn Query> {
        Box::new(TermQuery::new(
            Term::from_field_u64(field, v),
            IndexRecordOption::Basic,
        ))
    };
    BooleanQuery::new(vec![
        (Occur::Must, term(fields.room, room)),
        (Occur::Must, term(fields.seq, seq)),
    ])
}

/// The messages of `room` whose seqs are in `seqs` (retention's: rare,
/// and a range of the seq column).
pub(crate) fn messages(fields: &Fields, room: u64, seqs: impl RangeBounds<u64>) -> BooleanQuery {
    let seq = |b: Bound<&u64>| match b {
        Bound::Included(&s) => Bound::Included(Term::from_field_u64(fields.seq, s)),
        Bound::Excluded(&s) => Bound::Excluded(Term::from_field_u64(fields.seq, s)),
        Bound::Unbounded => Bound::Unbounded,
    };
    let room = Term::from_field_u64(fields.room, room);
    let range = RangeQuery::new(seq(seqs.start_bound()), seq(seqs.end_bound()));
    BooleanQuery::new(vec![
        (
            Occur::Must,
            Box::new(TermQuery::new(room, IndexRecordOption::Basic)),
        ),
        (Occur::Must, Box::new(range)),
    ])
}

/// What one log record does to the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// A message to index (a new one, or an edit's new text).
    Put {
        room: u64,
        seq: u64,
        text: String,
        /// An edit: the message's earlier document goes first.
        replaces: bool,
    },
    /// A deleted message: its document goes.
    Remove { room: u64, seq: u64 },
}

/// The change `record` makes, if any (reactions change no words; a
/// message with no words is not indexed).
pub(crate) fn change_of(record: &ArchivedRecord) -> Option<Change> {
    let (m, files) = match record {
        ArchivedRecord::Message(m) => (m, None),
        ArchivedRecord::Reply(r) => (&r.message, None),
        ArchivedRecord::Post(p) => (&p.message, Some(&p.files)),
        ArchivedRecord::Edit(e) => {
            return Some(Change::Put {
                room: e.room.to_native(),
                seq: e.seq.to_native(),
                text: e.body.as_str().to_string(),
                replaces: true,
            });
        }
        ArchivedRecord::Delete(d) => {
            return Some(Change::Remove {
                room: d.room.to_native(),
                seq: d.seq.to_native(),
            })
        }
        ArchivedRecord::React(_) => return None,
    };
    let mut text = m.body.as_str().to_string();
    for f in files.into_iter().flat_map(|f| f.iter()) {
        text.push('\n');
        text.push_str(f.name.as_str());
    }
    if text.trim().is_empty() {
        // Compaction leaves a deleted message's record with no body (its
        // delete follows); nothing to find in it.
        return None;
    }
    Some(Change::Put {
        room: m.room.to_native(),
        seq: m.seq.to_native(),
        text,
        replaces: false,
    })
}

/// The document of a `Put`.
pub(crate) fn document(fields: &Fields, room: u64, seq: u64, text: &str) -> TantivyDocument {
    let mut doc = TantivyDocument::default();
    doc.add_u64(fields.room, room);
    doc.add_u64(fields.seq, seq);
    doc.add_text(fields.body, text);
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_fold_case_and_accents_drop_long_runs_and_repeats() {
        let long = "x".repeat(TERM_BYTES_MAX + 1);
        let t = terms(&format!("Café CAFE déjà-vu {long} 42"), 16);
        assert_eq!(t, vec!["cafe", "deja", "vu", "42"]);
        let at_max = "y".repeat(TERM_BYTES_MAX);
        assert_eq!(terms(&at_max, 16), vec![at_max.clone()]);
        assert_eq!(terms("a b c d", 2), vec!["a", "b"]);
        assert!(terms("  !? ", 16).is_empty());
    }
}
