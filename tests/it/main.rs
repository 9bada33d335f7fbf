//! The one integration-test binary: library-level archive tests and CLI tests.

mod archive;
mod cli;
mod fixtures;
mod util;
