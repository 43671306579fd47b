//! The CRI container log format, as containerd's CRI plugin writes it and the kubelet reads it:
//!
//! ```text
//! <RFC 3339 nano UTC timestamp> <stdout|stderr> <F|P> <message>\n
//! ```
//!
//! A line the container ends with `\n` (or `\r\n`; both are dropped, as containerd does) is one
//! `F` (full) entry. A line longer than [`MAX_LINE_BYTES`] (16 KiB, containerd's default
//! `max_container_log_line_size`) is cut into `P` (partial) entries of exactly that size, ending
//! with an `F` entry for the rest; a line of exactly 16 KiB is a single `F`. Bytes left without a
//! newline when the stream ends are written as a `P` entry, like containerd (its `readLine` treats
//! a missing final newline as a partial line): the kubelet joins `P` entries without adding a
//! newline, so `kubectl logs` shows exactly what the container wrote.
//!
//! [`LineSplitter`] turns a stream of reads into entries; [`format_entry`] writes one entry;
//! [`parse_line`] reads one back.

use std::time::SystemTime;

use crate::timestamp::{RFC3339_NANO_LEN, write_rfc3339_nano};

/// The longest message one entry carries; longer lines are split into `P` entries.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Which of the container's output streams an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// File descriptor 1.
    Stdout,
    /// File descriptor 2.
    Stderr,
}

impl Stream {
    /// The name used in log lines: `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Whether an entry ends a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// `F`: the entry ends a line (the newline itself is not in the message).
    Full,
    /// `P`: the line continues in the next entry of the same stream.
    Partial,
}

impl Tag {
    /// The tag as written in log lines: `F` or `P`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tag::Full => "F",
            Tag::Partial => "P",
        }
    }
}

/// Cuts one stream's bytes into log entries; see the module docs for the rules.
#[derive(Debug)]
pub struct LineSplitter {
    pending: Vec<u8>,
    max: usize,
    /// A `\r` that ended the last read: dropped if a `\n` follows, kept otherwise.
    held_cr: bool,
}

impl Default for LineSplitter {
    fn default() -> Self {
        LineSplitter::new(MAX_LINE_BYTES)
    }
}

impl LineSplitter {
    /// A splitter whose entries carry at most `max` bytes (at least 1).
    pub fn new(max: usize) -> LineSplitter {
        LineSplitter {
            pending: Vec::new(),
            max: max.max(1),
            held_cr: false,
        }
    }

    /// Feeds the next bytes read from the stream; calls `emit` for every complete entry.
    pub fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(Tag, &[u8])) {
        while let Some(newline) = data.iter().position(|&b| b == b'\n') {
            let line = &data[..newline];
            if line.is_empty() {
                // "\r" + "\n" split across reads: a plain line end.
                self.held_cr = false;
            } else {
                self.release_cr(emit);
                self.append(line.strip_suffix(b"\r").unwrap_or(line), emit);
            }
            emit(Tag::Full, &self.pending);
            self.pending.clear();
            data = &data[newline + 1..];
        }
        if !data.is_empty() {
            self.release_cr(emit);
            match data.strip_suffix(b"\r") {
                Some(body) => {
                    self.append(body, emit);
                    self.held_cr = true;
                }
                None => self.append(data, emit),
            }
        }
    }

    /// The stream ended: writes what is left without a newline as a `P` entry.
    pub fn finish(&mut self, emit: &mut impl FnMut(Tag, &[u8])) {
        self.release_cr(emit);
        if !self.pending.is_empty() {
            emit(Tag::Partial, &self.pending);
            self.pending.clear();
        }
    }

    fn release_cr(&mut self, emit: &mut impl FnMut(Tag, &[u8])) {
        if std::mem::take(&mut self.held_cr) {
            self.append(b"\r", emit);
        }
    }

    /// Adds bytes of the current line, emitting a `P` entry each time the buffer is full and
    /// more bytes of the same line arrive.
    fn append(&mut self, mut bytes: &[u8], emit: &mut impl FnMut(Tag, &[u8])) {
        while !bytes.is_empty() {
            if self.pending.len() == self.max {
                emit(Tag::Partial, &self.pending);
                self.pending.clear();
            }
            let take = (self.max - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
    }
}

/// Appends one log line (`<time> <stream> <tag> <message>\n`) to `out`.
pub fn format_entry(out: &mut Vec<u8>, time: SystemTime, stream: Stream, tag: Tag, message: &[u8]) {
    let mut stamp = [0u8; RFC3339_NANO_LEN];
    write_rfc3339_nano(time, &mut stamp);
    out.reserve(stamp.len() + 10 + message.len());
    out.extend_from_slice(&stamp);
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(tag.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(message);
    out.push(b'\n');
}

/// One parsed log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The timestamp as written (RFC 3339).
    pub time: &'a str,
    /// The stream.
    pub stream: Stream,
    /// Full or partial.
    pub tag: Tag,
    /// The message, without the line's trailing newline.
    pub message: &'a [u8],
}

/// Parses one log line (with or without its trailing `\n`); `None` if it is not in CRI format.
pub fn parse_line(line: &[u8]) -> Option<Entry<'_>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut fields = line.splitn(4, |&b| b == b' ');
    let time = std::str::from_utf8(fields.next()?).ok()?;
    let stream = match fields.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    // The kubelet allows several `:`-separated tags; the first one is F or P.
    let tag = match fields.next()?.split(|&b| b == b':').next()? {
        b"F" => Tag::Full,
        b"P" => Tag::Partial,
        _ => return None,
    };
    let message = fields.next().unwrap_or_default();
    Some(Entry {
        time,
        stream,
        tag,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// Feeds `reads` one by one, then ends the stream; returns the entries.
    fn split(max: usize, reads: &[&[u8]]) -> Vec<(Tag, Vec<u8>)> {
        let mut out = Vec::new();
        let mut emit = |tag: Tag, msg: &[u8]| out.push((tag, msg.to_vec()));
        let mut splitter = LineSplitter::new(max);
        for read in reads {
            splitter.push(read, &mut emit);
        }
        splitter.finish(&mut emit);
        out
    }

    fn full(msg: &str) -> (Tag, Vec<u8>) {
        (Tag::Full, msg.as_bytes().to_vec())
    }

    fn partial(msg: &str) -> (Tag, Vec<u8>) {
        (Tag::Partial, msg.as_bytes().to_vec())
    }

    #[test]
    fn full_lines_and_empty_lines() {
        assert_eq!(
            split(16, &[b"hello\n\nworld\n"]),
            vec![full("hello"), full(""), full("world")]
        );
    }

    #[test]
    fn lines_spanning_reads_are_joined() {
        assert_eq!(
            split(16, &[b"hel", b"lo\nwo", b"rld\n"]),
            vec![full("hello"), full("world")]
        );
    }

    #[test]
    fn long_lines_split_into_partials_ending_with_full() {
        // 40 KiB with the real limit: P(16 KiB), P(16 KiB), F(8 KiB).
        let line = vec![b'a'; 40 * 1024];
        let mut input = line.clone();
        input.push(b'\n');
        let entries = split(MAX_LINE_BYTES, &[&input]);
        let shape: Vec<(Tag, usize)> = entries.iter().map(|(t, m)| (*t, m.len())).collect();
        assert_eq!(
            shape,
            vec![
                (Tag::Partial, 16 * 1024),
                (Tag::Partial, 16 * 1024),
                (Tag::Full, 8 * 1024)
            ]
        );
        let joined: Vec<u8> = entries.into_iter().flat_map(|(_, m)| m).collect();
        assert_eq!(joined, line);
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_one_full_entry() {
        assert_eq!(split(4, &[b"abcd\n"]), vec![full("abcd")]);
        assert_eq!(split(4, &[b"abcd", b"\n"]), vec![full("abcd")]);
        assert_eq!(
            split(4, &[b"abcdefgh\n"]),
            vec![partial("abcd"), full("efgh")]
        );
        assert_eq!(split(4, &[b"abcde\n"]), vec![partial("abcd"), full("e")]);
    }

    #[test]
    fn a_trailing_line_without_newline_is_partial_at_eof() {
        assert_eq!(
            split(16, &[b"done\ntail"]),
            vec![full("done"), partial("tail")]
        );
        assert_eq!(split(16, &[b"done\n"]), vec![full("done")]);
        assert_eq!(split(16, &[]), vec![]);
    }

    #[test]
    fn crlf_ends_a_line_even_across_reads() {
        assert_eq!(
            split(16, &[b"one\r\ntwo\r", b"\nthree\r", b"x\n"]),
            vec![full("one"), full("two"), full("three\rx")]
        );
        // A lone \r at EOF is content.
        assert_eq!(split(16, &[b"cr\r"]), vec![partial("cr\r")]);
        // \r\n right at the limit does not produce an empty entry.
        assert_eq!(split(4, &[b"abcd\r", b"\n"]), vec![full("abcd")]);
    }

    #[test]
    fn formats_and_parses_entries() {
        let time = UNIX_EPOCH + Duration::new(1_700_492_645, 5);
        let mut out = Vec::new();
        format_entry(&mut out, time, Stream::Stderr, Tag::Partial, b"a b c");
        assert_eq!(out, b"2023-11-20T15:04:05.000000005Z stderr P a b c\n");
        let entry = parse_line(&out).expect("parses");
        assert_eq!(
            entry,
            Entry {
                time: "2023-11-20T15:04:05.000000005Z",
                stream: Stream::Stderr,
                tag: Tag::Partial,
                message: b"a b c",
            }
        );
        out.clear();
        format_entry(&mut out, time, Stream::Stdout, Tag::Full, b"");
        assert_eq!(parse_line(&out).map(|e| e.message), Some(&b""[..]));
        assert_eq!(parse_line(b"garbage"), None);
        assert_eq!(parse_line(b"t stdin F x"), None);
    }
}
