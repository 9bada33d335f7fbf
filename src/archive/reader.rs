//! Reads one entry by seeking to its member: the cost depends on the entry, not on the archive.

use std::io::{self, BufReader, Read, Seek, SeekFrom};

use flate2::bufread::MultiGzDecoder;

use super::Placement;

/// The data of the entry at `placement`, `size` bytes long. A multi-member decoder is used
/// because entries longer than one member continue into the next ones.
pub fn open_entry<R: Read + Seek>(
    mut file: R,
    placement: &Placement,
    size: u64,
) -> io::Result<impl Read> {
    file.seek(SeekFrom::Start(placement.member))?;
    let mut decoder = MultiGzDecoder::new(BufReader::with_capacity(64 << 10, file));
    let skipped = io::copy(&mut (&mut decoder).take(placement.data_at), &mut io::sink())?;
    if skipped != placement.data_at {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "archive ends before the entry's data",
        ));
    }
    Ok(ExactReader {
        inner: decoder.take(size),
        remaining: size,
    })
}

/// Turns a short read into an error instead of a silently short entry.
struct ExactReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "archive ends {} bytes before the entry's end",
                    self.remaining
                ),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}
