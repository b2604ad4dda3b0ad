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
        }
    }
}

impl Deflate {
    /// Inflates `input` and appends the plain bytes to `out`.
    pub fn inflate(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), InflateError> {
        loop {
            out.reserve(input.len().max(1024) * 2);
            let before_in = self.inflate.total_in();
            let before_out = self.inflate.total_out();
            let status = self
                .inflate
                .decompress_vec(input, out, FlushDecompress::Sync)
                .map_err(|_| InflateError)?;
            let used = (self.inflate.total_in() - before_in) as usize;
            let produced = self.inflate.total_out() - before_out;
            input = &input[used..];
            if status == Status::StreamEnd {
                return Err(InflateError);
            }
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(());
            }
            if used == 0 && produced == 0 && out.len() < out.capacity() {
                return Ok(());
            }
        }
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

    #[test]
    fn round_trip_in_pieces() {
        let mut a = Deflate::default();
        let mut b = Deflate::default();
        let text: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let wire = a.deflate(&text);
        let mut plain = Vec::new();
        for piece in wire.chunks(7) {
            b.inflate(piece, &mut plain).unwrap();
        }
        assert_eq!(plain, text);
        let mut bad = Deflate::default();
        assert!(
            bad.inflate(b"\xff\xff\xff\xff garbage", &mut Vec::new())
                .is_err()
        );
    }
}
