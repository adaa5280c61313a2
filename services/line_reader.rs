//! Reading newline-terminated lines with a bound, so a process that never writes `\n` cannot make
//! exemesh buffer without limit.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The outcome of one bounded read.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line is in the buffer, without its `\n` (a last line without `\n` counts too).
    Complete,
    /// End of stream, nothing read.
    Eof,
    /// The line exceeded the bound; the buffer holds its first `max` bytes.
    TooLong,
}

/// Reads one line into `buf` (cleared first), holding at most `max` bytes.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                Line::Eof
            } else {
                Line::Complete
            });
        }
        let (chunk, found) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if buf.len() + chunk.len() > max {
            let room = max - buf.len();
            buf.extend_from_slice(&chunk[..room]);
            let used = found.unwrap_or(available.len()).min(room.max(1));
            reader.consume(used);
            return Ok(Line::TooLong);
        }
        buf.extend_from_slice(chunk);
        let used = found.unwrap_or(chunk.len());
        reader.consume(used);
        if found.is_some() {
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
            return Ok(Line::Complete);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn splits_lines_and_bounds_them() {
        let data: &[u8] = b"one\ntwo\r\nthree-is-long\nlast";
        let mut reader = tokio::io::BufReader::with_capacity(4, data);
        let mut buf = Vec::new();
        assert_eq!(
            read_line(&mut reader, &mut buf, 8).await.expect("io"),
            Line::Complete
        );
        assert_eq!(buf, b"one");
        assert_eq!(
            read_line(&mut reader, &mut buf, 8).await.expect("io"),
            Line::Complete
        );
        assert_eq!(buf, b"two");
        assert_eq!(
            read_line(&mut reader, &mut buf, 8).await.expect("io"),
            Line::TooLong
        );
        assert_eq!(buf, b"three-is");
    }

    #[tokio::test]
    async fn reports_a_last_line_without_newline_then_eof() {
        let data: &[u8] = b"a\nlast";
        let mut reader = tokio::io::BufReader::new(data);
        let mut buf = Vec::new();
        assert_eq!(
            read_line(&mut reader, &mut buf, 100).await.expect("io"),
            Line::Complete
        );
        assert_eq!(
            read_line(&mut reader, &mut buf, 100).await.expect("io"),
            Line::Complete
        );
        assert_eq!(buf, b"last");
        assert_eq!(
            read_line(&mut reader, &mut buf, 100).await.expect("io"),
            Line::Eof
        );
    }
}
