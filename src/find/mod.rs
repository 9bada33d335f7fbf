//! `find` (issue 18): every message an archive held in any retained run, found by header fields
//! and internal date through the find index beside the archive (formats/find-index.md):
//! `fields` reads a message's header, `history` walks the runs, `file` stores the result.

pub mod fields;
pub mod file;
mod history;

pub use fields::Fields;
pub use file::{find_index_path, Copy, EndHow, Ended, FindIndex, Folder, Message};

use crate::error::{Error, Result};
use crate::spool::name::MboxName;
use crate::store::Archive;

use fields::folded;

/// What the search asks for; every condition given must hold (formats/find-index.md section 3).
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub from: Option<String>,
    pub to: Option<String>,
    pub subject: Option<String>,
    pub message_id: Option<String>,
    pub since: Option<i64>,
    pub before: Option<i64>,
    pub mailbox: Option<String>,
    pub deleted_only: bool,
}

/// How the find index of one archive was had.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexUse {
    /// Read and current.
    Current,
    /// Read and brought up to date with newer runs.
    Updated,
    /// Built from the whole archive.
    Built,
}

/// The archive's find index, current: read from beside the archive, brought up to date or
/// rebuilt as formats/find-index.md section 4 says, and saved when it changed (`save`). A
/// problem saving is a notice, never a failure: the index is a cache.
pub fn current_index(
    archive: &Archive,
    save: bool,
    notices: &mut Vec<String>,
) -> Result<(FindIndex, IndexUse)> {
    let path = find_index_path(&archive.paths().archive);
    let previous = if save {
        match file::read(&path) {
            Ok(p) => p,
            Err(err) => {
                notices.push(format!("rebuilding the find index: {err}"));
                None
            }
        }
    } else {
        None
    };
    let (index, used) = history::up_to_date(archive, previous, notices);
    if save && used != IndexUse::Current {
        if let Err(err) = crate::io::write_replace(&path, &file::encode(&index)) {
            notices.push(format!("the find index could not be saved: {err}"));
        }
    }
    Ok((index, used))
}

/// Brings an existing find index up to date after a backup or a compaction; nothing when the
/// owner has none (the first search builds it). Returns notices worth an operator's attention.
pub fn refresh_existing(archive: &Archive) -> Vec<String> {
    let path = find_index_path(&archive.paths().archive);
    if std::fs::symlink_metadata(&path).is_err() {
        return Vec::new();
    }
    let mut notices = Vec::new();
    let _ = current_index(archive, true, &mut notices);
    notices
}

/// The name a delayed delete kept (`DELETED.user.alice.Old.6B02336D`) back to the one the
/// mailbox had (`user.alice.Old`), and whether it was one.
fn undeleted(internal: &str) -> (MboxName, bool) {
    let name = MboxName::from_internal(internal);
    if name.is_deleted(history::DELETED_PREFIX) && name.parts.len() > 2 {
        let parts = name.parts[1..name.parts.len() - 1].to_vec();
        return (
            MboxName {
                domain: name.domain,
                parts,
            },
            true,
        );
    }
    (name, false)
}

/// The name an admin types for a mailbox (`INBOX`, `Archive/2023`), from the internal form; a
/// mailbox kept by a delayed delete by the name it had, marked `(deleted)`.
pub fn display_name(internal: &str) -> String {
    match undeleted(internal) {
        (name, true) => format!("{} (deleted)", name.relative('/')),
        (name, false) => name.relative('/'),
    }
}

fn name_matches(internal: &str, wanted: &str) -> bool {
    let (name, _) = undeleted(internal);
    let internal = name.internal();
    let internal = internal.as_str();
    if name.is_inbox() && wanted.eq_ignore_ascii_case("INBOX") {
        return true;
    }
    name.relative('/') == wanted || internal == wanted || name.parts.join("/") == wanted
}

/// The messages of `index` that match, in order of first appearance.
pub fn search<'a>(index: &'a FindIndex, query: &Query) -> Result<Vec<&'a Message>> {
    let matcher = Matcher::new(query, &index.folders)?;
    Ok(index
        .messages
        .iter()
        .filter(|m| matcher.matches(m))
        .collect())
}

/// The archive's find index with only the messages that match, and how many it holds, when it
/// is current (the archive's identity and runs, as `up_to_date` takes them): read as it
/// streams out of its file, so a search of a large owner holds what it found, not every message
/// (issue 19). `None` when it is missing, unreadable or behind the archive: the caller then
/// goes the full way (`current_index`), which brings it up to date. Needs only the archive's
/// runs, so the archive may be open streamed.
pub fn search_current(archive: &Archive, query: &Query) -> Result<Option<(FindIndex, usize)>> {
    let path = find_index_path(&archive.paths().archive);
    let Ok(reader) = crate::io::open_own(&path) else {
        return Ok(None);
    };
    let (archive_id, marks) = history::identity(archive);
    let current = |head: &file::Head| {
        head.runs.len() == marks.len() && history::follows(head, &archive_id, &marks)
    };
    // Made at the first message line, once the head (checked then, once) and the folders are
    // known.
    let mut matcher: Option<Matcher> = None;
    let mut failure = None;
    let mut keep = |head: &file::Head, folders: &[Folder], m: &Message| {
        if matcher.is_none() {
            if !current(head) {
                return None;
            }
            match Matcher::new(query, folders) {
                Ok(made) => matcher = Some(made),
                Err(e) => {
                    failure = Some(e);
                    return None;
                }
            }
        }
        Some(matcher.as_ref().is_some_and(|x| x.matches(m)))
    };
    let decoded = file::decode_filtered(std::io::BufReader::new(reader), &path, &mut keep);
    if let Some(e) = failure {
        return Err(e);
    }
    // An index that does not read is rebuilt by the full way, which says so.
    let Ok(Some((index, total))) = decoded else {
        return Ok(None);
    };
    if !current(&index.head) {
        return Ok(None);
    }
    // An index with no message lines never asked `keep`: the query is checked here.
    Matcher::new(query, &index.folders)?;
    Ok(Some((index, total)))
}

/// A query made ready to test messages of an index with these folders.
struct Matcher {
    from: Option<String>,
    to: Option<String>,
    subject: Option<String>,
    message_id: Option<String>,
    folders: Option<Vec<bool>>,
    since: Option<i64>,
    before: Option<i64>,
    deleted_only: bool,
}

impl Matcher {
    fn new(query: &Query, folders: &[Folder]) -> Result<Matcher> {
        if let Some(t) = &query.message_id {
            if t.trim_matches(|c| c == '<' || c == '>').is_empty() {
                return Err(Error::usage("--message-id needs an ID"));
            }
        }
        Ok(Matcher {
            from: query.from.as_deref().map(folded),
            to: query.to.as_deref().map(folded),
            subject: query.subject.as_deref().map(folded),
            message_id: query
                .message_id
                .as_deref()
                .map(|id| id.trim().trim_matches(|c| c == '<' || c == '>').to_string()),
            folders: query.mailbox.as_deref().map(|wanted| {
                folders
                    .iter()
                    .map(|f| f.names.iter().any(|n| name_matches(&n.name, wanted)))
                    .collect()
            }),
            since: query.since,
            before: query.before,
            deleted_only: query.deleted_only,
        })
    }

    fn matches(&self, m: &Message) -> bool {
        let contains = |field: &Option<String>, wanted: &Option<String>| match wanted {
            None => true,
            Some(w) => field
                .as_deref()
                .is_some_and(|f| folded(f).contains(w.as_str())),
        };
        let none = Fields::default();
        let f = m.fields.as_ref().unwrap_or(&none);
        contains(&f.from, &self.from)
            && contains(&f.to, &self.to)
            && contains(&f.subject, &self.subject)
            && self
                .message_id
                .as_ref()
                .is_none_or(|id| f.message_id.as_deref() == Some(id.as_str()))
            && (!self.deleted_only || !m.seen.iter().any(Copy::is_live))
            && m.seen.iter().any(|c| {
                self.since.is_none_or(|t| c.internaldate >= t)
                    && self.before.is_none_or(|t| c.internaldate < t)
                    && self
                        .folders
                        .as_ref()
                        .is_none_or(|fs| fs.get(c.folder as usize).copied().unwrap_or(false))
            })
    }
}
