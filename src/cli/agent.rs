//! `mailpack agent`: this host's spool, served read-only over stdin/stdout.

use std::io;
use std::os::fd::AsFd;
use std::path::PathBuf;

use clap::Args;

use super::output::Printer;
use super::LockMethodArg;
use crate::error::Error;

#[derive(Args, Debug)]
pub(super) struct AgentArgs {
    /// The server's imapd.conf.
    #[arg(long, default_value = crate::spool::config::DEFAULT_CONFIG, value_name = "FILE")]
    config: PathBuf,
    /// How the server was built to lock: fcntl (Cyrus's default) or flock.
    #[arg(long, value_enum, default_value_t = LockMethodArg::Fcntl)]
    lock_method: LockMethodArg,
    /// Seconds to wait for a lock Cyrus holds before answering that the mailbox is busy.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    lock_timeout: u64,
}

pub(super) fn run(args: AgentArgs, _p: &mut Printer) -> Result<u8, Error> {
    let spool = crate::spool::Spool::open(&args.config)?;
    let annotations = spool.annotations()?;
    let mut source = crate::agent::LocalSource::new(
        &spool,
        &annotations,
        args.lock_method.options(args.lock_timeout),
    );
    crate::agent::widen_pipe(io::stdout().as_fd());
    crate::agent::serve(&mut source, io::stdin().lock(), io::stdout().lock())?;
    Ok(0)
}
