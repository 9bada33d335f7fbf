//! `mailpack spool ls`: a Cyrus spool as mailpack reads it.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::output::{self, Printer};
use super::LockMethodArg;
use crate::commands;
use crate::error::Error;

#[derive(Subcommand, Debug)]
pub(super) enum SpoolCommand {
    /// Users and their mailboxes (name, uniqueid, path, index version, message and expunged
    /// counts), subscriptions and seen state; with --messages, every index record.
    Ls(SpoolLsArgs),
}

#[derive(Args, Debug)]
pub(super) struct SpoolLsArgs {
    /// The server's imapd.conf.
    #[arg(long, default_value = crate::spool::config::DEFAULT_CONFIG, value_name = "FILE")]
    config: PathBuf,
    /// Only these users (repeatable); default: every user, then shared mailboxes.
    #[arg(long, value_name = "U")]
    user: Vec<String>,
    /// Also list every index record (uid, guid, flags, internal date, size, modseq).
    #[arg(long)]
    messages: bool,
    /// How the server was built to lock: fcntl (Cyrus's default) or flock.
    #[arg(long, value_enum, default_value_t = LockMethodArg::Fcntl)]
    lock_method: LockMethodArg,
    /// Seconds to wait for a lock Cyrus holds before reporting the mailbox busy.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    lock_timeout: u64,
    #[arg(long)]
    json: bool,
}

pub(super) fn run(command: SpoolCommand, p: &mut Printer) -> Result<u8, Error> {
    let SpoolCommand::Ls(args) = command;
    let listing = commands::spool::spool_ls(&commands::spool::SpoolLsOptions {
        config: args.config,
        users: args.user,
        messages: args.messages,
        locks: args.lock_method.options(args.lock_timeout),
    })?;
    let mut code = 0;
    for user in &listing.users {
        if !user.problems.is_empty() || user.mailboxes.iter().any(|m| m.problem.is_some()) {
            code = 1;
        }
        if args.json {
            p.json("user", user)?;
            continue;
        }
        let layout = if user.legacy_layout {
            "by name"
        } else {
            "by uniqueid"
        };
        p.line(&format!("user {} ({layout})", user.user))?;
        for m in &user.mailboxes {
            p.line(&format!("  {}", output::mailbox_line(m)))?;
            for r in m.records.iter().flatten() {
                p.line(&format!("    {}", output::record_line(r)))?;
            }
        }
        if !user.subscriptions.is_empty() {
            p.line(&format!(
                "  subscriptions: {}",
                user.subscriptions.join(", ")
            ))?;
        }
        for s in &user.seen {
            p.line(&format!("  seen in {}: {}", s.uniqueid, s.seen_uids))?;
        }
        for (resource, used, limit) in user.quota.iter().flat_map(|q| &q.resources) {
            let limit = limit.map_or("unlimited".to_string(), |l| l.to_string());
            p.line(&format!("  quota {resource}: used {used}, limit {limit}"))?;
        }
        for a in &user.annotations {
            let scope = if a.userid.is_empty() {
                "shared"
            } else {
                "private"
            };
            p.line(&format!(
                "  metadata {} /{scope}{} = {:?}",
                a.mailbox, a.entry, a.value
            ))?;
        }
        if !user.sieve.scripts.is_empty() {
            let active = user.sieve.active.as_deref().unwrap_or("none");
            p.line(&format!(
                "  sieve scripts: {} (active: {active})",
                user.sieve.scripts.join(", ")
            ))?;
        }
        for problem in &user.problems {
            p.line(&format!("  problem: {problem}"))?;
        }
    }
    for m in &listing.shared {
        if m.problem.is_some() {
            code = 1;
        }
        if args.json {
            p.json("shared", m)?;
        } else {
            p.line(&format!("shared {}", output::mailbox_line(m)))?;
        }
    }
    Ok(code)
}
