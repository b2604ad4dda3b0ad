//! The bytes of a twoskip file (Cyrus `lib/cyrusdb_twoskip.c`, format version 1): the
//! 64-byte header and the records, big-endian, each with a CRC-32 of its head and of its
//! key and value. Pure functions over byte slices: nothing here touches a file.

use super::TwoskipError;

/// The 20 bytes every twoskip file starts with.
pub const MAGIC: &[u8; 20] = b"\xa1\x02\x8b\x0dtwoskip file\0\0\0\0";
/// The only format version there is.
pub const VERSION: u32 = 1;
/// Size of the header; the DUMMY record follows it.
pub const HEADER_SIZE: usize = 64;
/// Where the DUMMY record (the head of every list) lives.
pub const DUMMY_OFFSET: u64 = HEADER_SIZE as u64;
/// Highest skiplist level; the DUMMY has this level.
pub const MAX_LEVEL: u8 = 31;
/// Header flag: a transaction is under way (or died) and the file needs recovery.
pub const FLAG_DIRTY: u32 = 1;
/// Cyrus rewrites (repacks) a file above this size once it has doubled since the last
/// repack (`MINREWRITE`, sic).
pub const MIN_REWRITE: u64 = 16834;
/// Record heads are kept inside one block of this size, so a head rewrite is atomic.
const BLOCK_SIZE: u64 = 512;
/// What fills the gap when a record head would straddle a block.
pub const BLANK: &[u8; 8] = b" BLANK\x07\xa0";

/// Record types.
pub const DUMMY: u8 = b'=';
/// A key and its value (an add or a replace).
pub const RECORD: u8 = b'+';
/// A deletion; its one pointer names the deleted record's successor.
pub const DELETE: u8 = b'-';
/// The end of a transaction; its pointer is the file size when the transaction began.
pub const COMMIT: u8 = b'$';

/// The file header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Format version (1).
    pub version: u32,
    /// Bumped by every repack, so cached offsets of an older file are not trusted.
    pub generation: u64,
    /// Live key/value records.
    pub num_records: u64,
    /// File size right after the last repack (or creation).
    pub repack_size: u64,
    /// File size at the last commit: everything beyond is uncommitted.
    pub current_size: u64,
    /// [`FLAG_DIRTY`] and nothing else.
    pub flags: u32,
}

impl Header {
    /// Whether a transaction is under way or died.
    pub fn is_dirty(&self) -> bool {
        self.flags & FLAG_DIRTY != 0
    }

    /// Whether Cyrus would checkpoint (repack) the file after a commit.
    pub fn wants_repack(&self) -> bool {
        self.current_size > MIN_REWRITE && self.current_size > 2 * self.repack_size
    }

    /// The 64 header bytes, CRC included.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out[..20].copy_from_slice(MAGIC);
        out[20..24].copy_from_slice(&self.version.to_be_bytes());
        out[24..32].copy_from_slice(&self.generation.to_be_bytes());
        out[32..40].copy_from_slice(&self.num_records.to_be_bytes());
        out[40..48].copy_from_slice(&self.repack_size.to_be_bytes());
        out[48..56].copy_from_slice(&self.current_size.to_be_bytes());
        out[56..60].copy_from_slice(&self.flags.to_be_bytes());
        let crc = crc32fast::hash(&out[..60]);
        out[60..64].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// Reads and checks the header at the start of `file`.
    pub fn parse(file: &[u8]) -> Result<Header, TwoskipError> {
        let bytes = file
            .get(..HEADER_SIZE)
            .ok_or(TwoskipError::Format("file shorter than the 64-byte header"))?;
        if &bytes[..20] != MAGIC {
            return Err(TwoskipError::Format("not a twoskip file (bad magic)"));
        }
        let header = Header {
            version: be32(bytes, 20),
            generation: be64(bytes, 24),
            num_records: be64(bytes, 32),
            repack_size: be64(bytes, 40),
            current_size: be64(bytes, 48),
            flags: be32(bytes, 56),
        };
        if header.version > VERSION {
            return Err(TwoskipError::Format("twoskip version newer than 1"));
        }
        if crc32fast::hash(&bytes[..60]) != be32(bytes, 60) {
            return Err(TwoskipError::Format("header CRC mismatch"));
        }
        Ok(header)
    }
}

fn be32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_be_bytes(word)
}

fn be64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(word)
}

/// One record as read from (or about to be written to) the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where the record starts (0: not in the file yet).
    pub offset: u64,
    /// [`DUMMY`], [`RECORD`], [`DELETE`] or [`COMMIT`].
    pub kind: u8,
    /// Skiplist level: the record is on lists 0..level.
    pub level: u8,
    /// Key length.
    pub key_len: u64,
    /// Value length.
    pub value_len: u64,
    /// `level + 1` pointers: two for level 0, then one per level 1..level.
    pub next: [u64; MAX_LEVEL as usize + 1],
    /// CRC-32 of key, value and padding.
    pub crc_tail: u32,
    /// Where the key starts.
    pub key_offset: u64,
    /// Length of the whole record, padding included.
    pub len: u64,
}

impl Record {
    /// A record not yet written.
    pub fn new(kind: u8, level: u8) -> Record {
        Record {
            offset: 0,
            kind,
            level,
            key_len: 0,
            value_len: 0,
            next: [0; MAX_LEVEL as usize + 1],
            crc_tail: 0,
            key_offset: 0,
            len: 0,
        }
    }

    /// The key, from the file bytes it was read from.
    pub fn key<'f>(&self, file: &'f [u8]) -> &'f [u8] {
        &file[self.key_offset as usize..(self.key_offset + self.key_len) as usize]
    }

    /// The value, from the file bytes it was read from.
    pub fn value<'f>(&self, file: &'f [u8]) -> &'f [u8] {
        let start = self.key_offset + self.key_len;
        &file[start as usize..(start + self.value_len) as usize]
    }

    /// Length of the head: type, level, lengths (long ones too), pointers and CRCs.
    pub fn head_len(&self) -> u64 {
        let long_words = u64::from(self.key_len >= u16::MAX as u64)
            + u64::from(self.value_len >= u32::MAX as u64);
        8 + 8 * long_words + 8 * (self.level as u64 + 1) + 8
    }

    /// The head: everything the format ever rewrites in place (type .. CRCs).
    pub fn encode_head(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.head_len() as usize);
        out.push(self.kind);
        out.push(self.level);
        let long_key = self.key_len >= u16::MAX as u64;
        let long_value = self.value_len >= u32::MAX as u64;
        let short_key = if long_key {
            u16::MAX
        } else {
            self.key_len as u16
        };
        let short_value = if long_value {
            u32::MAX
        } else {
            self.value_len as u32
        };
        out.extend_from_slice(&short_key.to_be_bytes());
        out.extend_from_slice(&short_value.to_be_bytes());
        if long_key {
            out.extend_from_slice(&self.key_len.to_be_bytes());
        }
        if long_value {
            out.extend_from_slice(&self.value_len.to_be_bytes());
        }
        for pointer in &self.next[..=self.level as usize] {
            out.extend_from_slice(&pointer.to_be_bytes());
        }
        let crc_head = crc32fast::hash(&out);
        out.extend_from_slice(&crc_head.to_be_bytes());
        out.extend_from_slice(&self.crc_tail.to_be_bytes());
        out
    }

    /// Reads the record at `offset` and checks its head CRC (not its tail: see
    /// [`Record::check_tail`]).
    pub fn read(file: &[u8], offset: u64) -> Result<Record, TwoskipError> {
        let bad = |what| TwoskipError::Record { offset, what };
        let start = usize::try_from(offset).map_err(|_| bad("offset out of range"))?;
        let fixed = file
            .get(start..start.saturating_add(8))
            .ok_or(bad("record beyond the end of the file"))?;
        let kind = fixed[0];
        let level = fixed[1];
        if level > MAX_LEVEL {
            return Err(bad("level above 31"));
        }
        let mut key_len = u64::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        let mut value_len = u64::from(be32(fixed, 4));
        let mut at = start + 8;
        let word = |at: &mut usize| -> Result<u64, TwoskipError> {
            let bytes = file
                .get(*at..*at + 8)
                .ok_or(bad("record beyond the end of the file"))?;
            *at += 8;
            Ok(be64(bytes, 0))
        };
        if key_len == u64::from(u16::MAX) {
            key_len = word(&mut at)?;
        }
        if value_len == u64::from(u32::MAX) {
            value_len = word(&mut at)?;
        }
        let mut next = [0u64; MAX_LEVEL as usize + 1];
        for pointer in next.iter_mut().take(level as usize + 1) {
            *pointer = word(&mut at)?;
        }
        let crcs = file
            .get(at..at + 8)
            .ok_or(bad("record beyond the end of the file"))?;
        let crc_head = be32(crcs, 0);
        let crc_tail = be32(crcs, 4);
        if crc32fast::hash(&file[start..at]) != crc_head {
            return Err(bad("head CRC mismatch"));
        }
        let key_offset = at as u64 + 8;
        let body = key_len
            .checked_add(value_len)
            .map(padded)
            .ok_or(bad("key and value lengths overflow"))?;
        let end = key_offset
            .checked_add(body)
            .ok_or(bad("key and value lengths overflow"))?;
        if end > file.len() as u64 {
            return Err(bad("record beyond the end of the file"));
        }
        Ok(Record {
            offset,
            kind,
            level,
            key_len,
            value_len,
            next,
            crc_tail,
            key_offset,
            len: end - offset,
        })
    }

    /// Checks the CRC of the key, value and padding.
    pub fn check_tail(&self, file: &[u8]) -> Result<(), TwoskipError> {
        let body = &file[self.key_offset as usize..(self.offset + self.len) as usize];
        if crc32fast::hash(body) == self.crc_tail {
            Ok(())
        } else {
            Err(TwoskipError::Record {
                offset: self.offset,
                what: "tail CRC mismatch",
            })
        }
    }
}

/// Key and value lengths rounded up to the 8-byte boundary the format pads to; a length
/// read from a damaged file near 2^64 saturates (and then fails the bounds checks).
pub fn padded(len: u64) -> u64 {
    len.div_ceil(8).saturating_mul(8)
}

/// The whole record (head, key, value, padding) for appending; sets `record.crc_tail`
/// and `record.key_len`/`value_len`.
pub fn encode_record(record: &mut Record, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    append_record(&mut out, record, key, value);
    out
}

/// [`encode_record`], appended to `out`.
pub fn append_record(out: &mut Vec<u8>, record: &mut Record, key: &[u8], value: &[u8]) {
    record.key_len = key.len() as u64;
    record.value_len = value.len() as u64;
    let padding = [0u8; 8];
    let padding = &padding[..(padded(record.key_len + record.value_len)
        - record.key_len
        - record.value_len) as usize];
    let mut tail = crc32fast::Hasher::new();
    tail.update(key);
    tail.update(value);
    tail.update(padding);
    record.crc_tail = tail.finalize();
    out.extend_from_slice(&record.encode_head());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out.extend_from_slice(padding);
}

/// How many BLANK fillers go before a record whose head is `head_len` bytes, appended at
/// `end`, so that the rewritable part of the head stays inside one 512-byte block.
pub fn blanks_before(end: u64, head_len: u64) -> u64 {
    if head_len > BLOCK_SIZE - 8 {
        return 0;
    }
    let mut end = end;
    let mut blanks = 0;
    while (end + 8) % BLOCK_SIZE > (end - 8 + head_len) % BLOCK_SIZE {
        end += 8;
        blanks += 1;
    }
    blanks
}

/// The next record on `level`, given that pointers at or beyond `end` are not (yet)
/// committed: level 0 keeps two pointers and the larger valid one wins.
pub fn next_at(record: &Record, level: u8, end: u64) -> u64 {
    if level > 0 {
        return record.next[level as usize + 1];
    }
    let (a, b) = (record.next[0], record.next[1]);
    if a >= end {
        b
    } else if b >= end {
        a
    } else {
        a.max(b)
    }
}

/// Points `record` at `offset` on `level`. On level 0 the pointer that is still
/// committed (below `committed`, and the larger) is never overwritten, so a crash before
/// the commit leaves the old list intact for recovery.
pub fn set_next(record: &mut Record, level: u8, offset: u64, committed: u64) {
    if level > 0 {
        record.next[level as usize + 1] = offset;
        return;
    }
    if record.next[0] >= committed {
        record.next[0] = offset;
    } else if record.next[1] >= committed {
        record.next[1] = offset;
    } else if record.next[1] > record.next[0] {
        record.next[0] = offset;
    } else {
        record.next[1] = offset;
    }
}

/// Reads the record at `offset`, stepping over a DELETE to the record it points at.
pub fn read_skipping_delete(file: &[u8], offset: u64) -> Result<Option<Record>, TwoskipError> {
    if offset == 0 {
        return Ok(None);
    }
    let record = Record::read(file, offset)?;
    if record.kind != DELETE {
        return Ok(Some(record));
    }
    match record.next[0] {
        0 => Ok(None),
        successor => Record::read(file, successor).map(Some),
    }
}

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Every live key and value of a committed file, in key order, each CRC checked: what
/// `cyr_dbtool show` prints. A damaged or truncated file gives an error, never a panic.
pub fn entries(file: &[u8]) -> Result<Vec<Entry>, TwoskipError> {
    let header = Header::parse(file)?;
    let end = header.current_size.min(file.len() as u64);
    let dummy = Record::read(file, DUMMY_OFFSET)?;
    if dummy.kind != DUMMY {
        return Err(TwoskipError::Record {
            offset: DUMMY_OFFSET,
            what: "no DUMMY record after the header",
        });
    }
    let mut out: Vec<Entry> = Vec::new();
    let mut offset = next_at(&dummy, 0, end);
    // Each step moves to a record appended later or earlier, never to itself; a file
    // with a pointer cycle cannot hold more records than bytes.
    let mut budget = file.len() / 24 + 1;
    while offset != 0 {
        budget = budget
            .checked_sub(1)
            .ok_or(TwoskipError::Format("pointer cycle on level 0"))?;
        let record = Record::read(file, offset)?;
        if record.kind == DELETE {
            offset = record.next[0];
            continue;
        }
        if record.kind != RECORD {
            return Err(TwoskipError::Record {
                offset,
                what: "level 0 points at a record that is not a key",
            });
        }
        record.check_tail(file)?;
        let key = record.key(file);
        if out.last().is_some_and(|(last, _)| last.as_slice() >= key) {
            return Err(TwoskipError::Record {
                offset,
                what: "keys out of order",
            });
        }
        out.push((key.to_vec(), record.value(file).to_vec()));
        offset = next_at(&record, 0, end);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the twoskip fuzz target: a length near 2^64 overflowed the padding.
    #[test]
    fn a_record_length_near_the_top_of_u64_is_an_error() {
        let mut file = vec![b'+', 0, 0xff, 0xff, 0, 0, 0, 0];
        file.extend_from_slice(&(u64::MAX - 2).to_be_bytes());
        file.extend_from_slice(&0u64.to_be_bytes());
        let crc_head = crc32fast::hash(&file);
        file.extend_from_slice(&crc_head.to_be_bytes());
        file.extend_from_slice(&0u32.to_be_bytes());
        assert!(Record::read(&file, 0).is_err());
    }

    #[test]
    fn blank_padding_keeps_heads_inside_a_block() {
        // Cyrus's own worked example in add_padding: 488 bytes in, a 32-byte head.
        assert_eq!(blanks_before(480, 32), 0);
        assert_eq!(blanks_before(488, 32), 2);
        assert_eq!(blanks_before(0x150, 40), 0);
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let header = Header {
            version: 1,
            generation: 7,
            num_records: 3,
            repack_size: 0x150,
            current_size: 0x1c0,
            flags: 0,
        };
        let mut bytes = header.encode().to_vec();
        assert_eq!(Header::parse(&bytes).ok(), Some(header));
        bytes[30] ^= 1;
        assert!(Header::parse(&bytes).is_err());
        assert!(Header::parse(&bytes[..10]).is_err());
    }

    #[test]
    fn level_zero_keeps_the_committed_pointer() {
        let mut record = Record::new(RECORD, 1);
        record.next[0] = 0x200;
        record.next[1] = 0x100;
        set_next(&mut record, 0, 0x900, 0x800);
        assert_eq!(record.next[..2], [0x200, 0x900]);
        assert_eq!(next_at(&record, 0, 0x800), 0x200);
        assert_eq!(next_at(&record, 0, 0x1000), 0x900);
        set_next(&mut record, 0, 0x950, 0x800);
        assert_eq!(record.next[..2], [0x200, 0x950]);
    }
}
