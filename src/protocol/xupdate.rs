//! The untagged lines of our XUPDATE extension, both directions: `* XSEQ` (where a stream
//! stands in the master's history) and `* XDUMP` (which kind of catch-up follows). Cyrus
//! clients never ask for XUPDATE, so never see them.

/// `* XSEQ "epoch" "seq" ["traceparent"]`: a stream's position after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    /// The master's epoch (a new one after its change log is lost).
    pub epoch: u64,
    /// The last change sent.
    pub seq: u64,
    /// The W3C `traceparent` of the traced command that made the change, if any.
    pub traceparent: Option<String>,
}

impl Position {
    /// Encodes `* XSEQ "epoch" "seq"`, with the traceparent as a third field when given
    /// (a slave links its apply span to it).
    pub fn encode(out: &mut Vec<u8>, epoch: u64, seq: u64, traceparent: Option<&str>) {
        let line = match traceparent {
            Some(traceparent) => format!("* XSEQ \"{epoch}\" \"{seq}\" \"{traceparent}\"\r\n"),
            None => format!("* XSEQ \"{epoch}\" \"{seq}\"\r\n"),
        };
        out.extend_from_slice(line.as_bytes());
    }

    /// Parses what follows `* XSEQ`; `None` unless epoch and seq are numbers.
    pub fn parse(rest: &[u8]) -> Option<Position> {
        let text = std::str::from_utf8(rest).ok()?;
        let mut fields = text.split_whitespace().map(|field| field.trim_matches('"'));
        let epoch = fields.next()?.parse().ok()?;
        let seq = fields.next()?.parse().ok()?;
        let traceparent = fields.next().map(str::to_owned);
        Some(Position {
            epoch,
            seq,
            traceparent,
        })
    }
}

/// `* XDUMP "delta"` or `* XDUMP "full"`: what an XUPDATE sends before streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpKind {
    /// Only the changes after the client's position.
    Delta,
    /// The whole list: names it does not carry are gone.
    Full,
}

impl DumpKind {
    /// `delta` or `full`, as on the wire and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            DumpKind::Delta => "delta",
            DumpKind::Full => "full",
        }
    }

    /// Encodes the `* XDUMP` line.
    pub fn encode(self, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("* XDUMP \"{}\"\r\n", self.name()).as_bytes());
    }

    /// Parses what follows `* XDUMP`: anything but `"delta"` is a full dump (the safe
    /// reading: a full dump never leaves a stale name behind).
    pub fn parse(rest: &[u8]) -> DumpKind {
        if rest == b"\"delta\"" {
            DumpKind::Delta
        } else {
            DumpKind::Full
        }
    }
}

/// `* XREWIND "seq"`, before `NO` to an elected replica's XUPDATE: this master knows the
/// history the replica asks from only through `seq` (it followed it while the replica was
/// master, or it is its own and a crash lost what followed), so the replica holds changes
/// past it that this master lacks. The replica takes this master's records of the names
/// those changes touched (FIND) and asks again from `seq`.
pub struct Rewind;

impl Rewind {
    /// Encodes the line.
    pub fn encode(out: &mut Vec<u8>, seq: u64) {
        out.extend_from_slice(format!("* XREWIND \"{seq}\"\r\n").as_bytes());
    }

    /// Parses what follows `* XREWIND`; `None` unless it is a number.
    pub fn parse(rest: &[u8]) -> Option<u64> {
        std::str::from_utf8(rest)
            .ok()?
            .trim()
            .trim_matches('"')
            .parse()
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn dump_kinds_are_spelled_as_cyrus_quotes_strings() {
        let mut out = Vec::new();
        DumpKind::Delta.encode(&mut out);
        DumpKind::Full.encode(&mut out);
        assert_eq!(out, b"* XDUMP \"delta\"\r\n* XDUMP \"full\"\r\n");
        assert_eq!(DumpKind::parse(b"\"delta\""), DumpKind::Delta);
        assert_eq!(DumpKind::parse(b"\"full\""), DumpKind::Full);
        assert_eq!(DumpKind::parse(b"delta?"), DumpKind::Full);
    }

    #[test]
    fn rewinds_round_trip() {
        let mut out = Vec::new();
        Rewind::encode(&mut out, 42);
        assert_eq!(out, b"* XREWIND \"42\"\r\n");
        assert_eq!(Rewind::parse(b"\"42\""), Some(42));
        assert_eq!(Rewind::parse(b"\"x\""), None);
    }

    #[test]
    fn a_position_without_numbers_is_none() {
        assert_eq!(Position::parse(b"\"x\" \"1\""), None);
        assert_eq!(Position::parse(b"\"1\""), None);
        assert_eq!(Position::parse(b"\xff"), None);
    }

    proptest! {
        #[test]
        fn positions_round_trip(epoch: u64, seq: u64, traced: bool) {
            let traceparent = traced
                .then(|| "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned());
            let mut out = Vec::new();
            Position::encode(&mut out, epoch, seq, traceparent.as_deref());
            let rest = out
                .strip_prefix(b"* XSEQ ")
                .and_then(|rest| rest.strip_suffix(b"\r\n"))
                .expect("an XSEQ line");
            prop_assert_eq!(Position::parse(rest), Some(Position { epoch, seq, traceparent }));
        }
    }
}
