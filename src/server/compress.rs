//! COMPRESS DEFLATE (RFC 4978 framing, spec §5.11): raw deflate both ways, with a sync
//! flush after each burst of output.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Why inflating failed; the session ends with `* BYE "Error decompressing data"`.
#[derive(Debug, thiserror::Error)]
#[error("error decompressing data")]
pub struct InflateError;

/// The two deflate streams of a compressed session.
pub struct Deflate {
    inflate: Decompress,
    deflate: Compress,
    /// The last inflate stopped at its output bound: the stream may hold more plain
    /// bytes for the input already taken.
    inflate_full: bool,
}

impl std::fmt::Debug for Deflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deflate")
    }
}

impl Default for Deflate {
    fn default() -> Self {
        Deflate {
            inflate: Decompress::new(false),
            deflate: Compress::new(Compression::default(), false),
            inflate_full: false,
        }
    }
}

/// Plain bytes inflated per step (the output window handed to zlib).
const INFLATE_STEP: usize = 16 * 1024;

impl Deflate {
    /// Inflates from `input`, appending at most `limit` plain bytes to `out`; returns how
    /// many input bytes it took. What it leaves (input, or output zlib still holds) comes
    /// with the next call: a few hundred bytes on the wire can carry megabytes, and no
    /// read may grow a session's buffer by more than `limit`.
    pub fn inflate(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        limit: usize,
    ) -> Result<usize, InflateError> {
        let start = out.len();
        let mut taken = 0;
        loop {
            let room = limit.saturating_sub(out.len() - start);
            if room == 0 {
                self.inflate_full = true;
                return Ok(taken);
            }
            let window = room.min(INFLATE_STEP);
            let filled = out.len();
            out.resize(filled + window, 0);
            let before_in = self.inflate.total_in();
            let before_out = self.inflate.total_out();
            let status =
                self.inflate
                    .decompress(&input[taken..], &mut out[filled..], FlushDecompress::Sync);
            let used = usize::try_from(self.inflate.total_in() - before_in).unwrap_or(0);
            let produced = usize::try_from(self.inflate.total_out() - before_out).unwrap_or(0);
            out.truncate(filled + produced);
            let status = status.map_err(|_| InflateError)?;
            taken += used;
            if status == Status::StreamEnd {
                return Err(InflateError);
            }
            // With room left over, zlib has taken all the input it can use.
            if produced < window {
                self.inflate_full = false;
                return Ok(taken);
            }
        }
    }

    /// Whether the stream may yield more plain bytes without more input (the last
    /// inflate stopped at its bound).
    pub fn has_pending_output(&self) -> bool {
        self.inflate_full
    }

    /// Deflates `input` with a sync flush, so the peer can decode everything sent so far.
    pub fn deflate(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        let mut rest = input;
        loop {
            out.reserve(rest.len() / 2 + 1024);
            let before_in = self.deflate.total_in();
            // Only fails on a stream error, which a fresh compressor cannot reach.
            let _ = self
                .deflate
                .compress_vec(rest, &mut out, FlushCompress::Sync);
            let used = (self.deflate.total_in() - before_in) as usize;
            rest = &rest[used..];
            if rest.is_empty() && out.len() < out.capacity() {
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inflates all of `wire`, fed in `piece`-byte reads, at most `limit` bytes a call.
    fn inflate_all(wire: &[u8], piece: usize, limit: usize) -> Vec<u8> {
        let mut stream = Deflate::default();
        let mut plain = Vec::new();
        let mut pending = Vec::new();
        let mut pieces = wire.chunks(piece);
        loop {
            if pending.is_empty() && !stream.has_pending_output() {
                match pieces.next() {
                    Some(next) => pending.extend_from_slice(next),
                    None => return plain,
                }
            }
            let before = plain.len();
            let taken = stream.inflate(&pending, &mut plain, limit).unwrap();
            assert!(plain.len() - before <= limit);
            pending.drain(..taken);
        }
    }

    #[test]
    fn round_trip_in_pieces() {
        let mut a = Deflate::default();
        let text: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let wire = a.deflate(&text);
        assert_eq!(inflate_all(&wire, 7, 1 << 20), text);
        let mut bad = Deflate::default();
        assert!(
            bad.inflate(b"\xff\xff\xff\xff garbage", &mut Vec::new(), 1024)
                .is_err()
        );
    }

    #[test]
    fn a_bomb_inflates_a_bounded_amount_per_call() {
        let mut a = Deflate::default();
        let text = vec![b'a'; 8 << 20];
        let wire = a.deflate(&text);
        assert!(wire.len() < 64 * 1024, "{} bytes on the wire", wire.len());
        assert_eq!(inflate_all(&wire, wire.len(), 10_000), text);
    }

    proptest::proptest! {
        #[test]
        fn any_text_survives_any_pieces_and_bounds(
            text in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..20_000),
            piece in 1usize..5000,
            limit in 1usize..40_000,
        ) {
            let wire = Deflate::default().deflate(&text);
            proptest::prop_assert_eq!(inflate_all(&wire, piece, limit), text);
        }
    }
}
