//! A twoskip file held in memory and changed exactly as Cyrus changes it (`store_here`,
//! `delete_here`, `stitch`, `mycommit`, `recovery1`), so that the same changes with the
//! same levels give the same bytes. Nothing here does I/O: a commit or a recovery yields
//! a [`WritePlan`] that the file layer carries out in the order crash safety needs.

use std::collections::BTreeMap;

use super::TwoskipError;
use super::format::{
    BLANK, COMMIT, DELETE, DUMMY, DUMMY_OFFSET, Entry, FLAG_DIRTY, HEADER_SIZE, Header, MAX_LEVEL,
    RECORD, Record, append_record, blanks_before, encode_record, next_at, read_skipping_delete,
    set_next,
};

const LEVELS: usize = MAX_LEVEL as usize + 1;

/// Chooses the level of each new record.
pub trait LevelSource: Send {
    /// The level of the next record written (1..=31).
    fn next_level(&mut self) -> u8;
}

/// Cyrus's distribution (`randlvl(1, 31)`): level k with probability 2^-k.
#[derive(Debug, Default)]
pub struct RandomLevels;

impl LevelSource for RandomLevels {
    fn next_level(&mut self) -> u8 {
        let mut level = 1;
        while level < MAX_LEVEL && rand::random::<bool>() {
            level += 1;
        }
        level
    }
}

/// What a commit or a recovery must write, in this order: the header marked dirty
/// (then a data sync), the rewritten heads of committed records, the appended bytes,
/// the truncation, a sync, the final header, a data sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePlan {
    /// The dirty header to write and sync first, if the file is not marked dirty yet.
    pub dirty_header: Option<[u8; HEADER_SIZE]>,
    /// Heads of already committed records, by offset.
    pub heads: Vec<(u64, Vec<u8>)>,
    /// Bytes appended at this offset (the old committed size).
    pub append: Option<(u64, Vec<u8>)>,
    /// The file length to truncate to (recovery: drop an uncommitted tail).
    pub truncate_to: Option<u64>,
    /// The clean header written last.
    pub header: [u8; HEADER_SIZE],
}

/// Where a key is, or would be: the record before it on each level and what follows.
struct Location {
    found: Option<Record>,
    back: [u64; LEVELS],
    forward: [u64; LEVELS],
}

/// The whole file in memory, plus what the open transaction changed.
#[derive(Debug, Clone)]
pub struct Image {
    bytes: Vec<u8>,
    header: Header,
    /// Heads of committed records rewritten in this transaction.
    rewritten: BTreeMap<u64, Vec<u8>>,
    /// Whether the current transaction has changed anything.
    dirty: bool,
}

impl Image {
    /// A new, empty file as Cyrus creates it: header and DUMMY, generation 1.
    pub fn empty() -> Image {
        let mut bytes = vec![0u8; HEADER_SIZE];
        let mut dummy = Record::new(DUMMY, MAX_LEVEL);
        bytes.extend_from_slice(&encode_record(&mut dummy, &[], &[]));
        let end = bytes.len() as u64;
        let header = Header {
            version: super::format::VERSION,
            generation: 1,
            num_records: 0,
            repack_size: end,
            current_size: end,
            flags: 0,
        };
        bytes[..HEADER_SIZE].copy_from_slice(&header.encode());
        Image {
            bytes,
            header,
            rewritten: BTreeMap::new(),
            dirty: false,
        }
    }

    /// Takes a file's bytes; it may need [`Image::recover`] (see [`Image::needs_recovery`]).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Image, TwoskipError> {
        let header = Header::parse(&bytes)?;
        Ok(Image {
            bytes,
            header,
            rewritten: BTreeMap::new(),
            dirty: false,
        })
    }

    /// The file's bytes as they are (with any uncommitted changes).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The header as of the last commit (or recovery).
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Whether Cyrus would run recovery before using the file: dirty, or not the
    /// committed length.
    pub fn needs_recovery(&self) -> bool {
        self.header.is_dirty() || self.bytes.len() as u64 != self.header.current_size
    }

    fn end(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read(&self, offset: u64) -> Result<Record, TwoskipError> {
        Record::read(&self.bytes, offset)
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<&[u8]>, TwoskipError> {
        let location = self.locate(key)?;
        Ok(location.found.map(|r| r.value(&self.bytes)))
    }

    /// Every live key and value in order.
    pub fn entries(&self) -> Result<Vec<Entry>, TwoskipError> {
        let mut out: Vec<Entry> = Vec::with_capacity(
            // The header's count is a hint from the file; no more records fit than bytes.
            (self.header.num_records as usize).min(self.bytes.len() / 24),
        );
        let end = self.end();
        let dummy = self.read(DUMMY_OFFSET)?;
        let mut next = read_skipping_delete(&self.bytes, next_at(&dummy, 0, end))?;
        while let Some(record) = next {
            let key = record.key(&self.bytes);
            // Strictly rising keys are what make a damaged file's pointer cycle end.
            if record.kind != RECORD || out.last().is_some_and(|(last, _)| last.as_slice() >= key) {
                return Err(TwoskipError::Record {
                    offset: record.offset,
                    what: "keys out of order on level 0",
                });
            }
            out.push((key.to_vec(), record.value(&self.bytes).to_vec()));
            next = read_skipping_delete(&self.bytes, next_at(&record, 0, end))?;
        }
        Ok(out)
    }

    /// Cyrus's `relocate`: walks down from the DUMMY to the last record before `key` on
    /// every level.
    fn locate(&self, key: &[u8]) -> Result<Location, TwoskipError> {
        let end = self.end();
        let mut current = self.read(DUMMY_OFFSET)?;
        let mut level = current.level as usize;
        let mut back = [0u64; LEVELS];
        let mut forward = [0u64; LEVELS];
        back[level] = current.offset;
        let mut candidate: Option<Record> = None;
        let mut ordering = std::cmp::Ordering::Less;
        let mut last_offset = 0;
        while level > 0 {
            let offset = next_at(&current, level as u8 - 1, end);
            back[level - 1] = current.offset;
            forward[level - 1] = offset;
            if offset != last_offset {
                last_offset = offset;
                candidate = read_skipping_delete(&self.bytes, offset)?;
                if let Some(record) = &candidate {
                    if (record.level as usize) < level {
                        return Err(TwoskipError::Record {
                            offset: record.offset,
                            what: "record on a list above its level",
                        });
                    }
                    let candidate_key = record.key(&self.bytes);
                    // Each step must rise, or a damaged file's pointer cycle never ends.
                    if current.offset != DUMMY_OFFSET && candidate_key <= current.key(&self.bytes) {
                        return Err(TwoskipError::Record {
                            offset: record.offset,
                            what: "keys out of order on a skip list",
                        });
                    }
                    ordering = candidate_key.cmp(key);
                    if ordering == std::cmp::Ordering::Less {
                        current = record.clone();
                        continue;
                    }
                }
            }
            level -= 1;
        }
        let found = match candidate {
            Some(record) if ordering == std::cmp::Ordering::Equal => {
                for (i, slot) in forward.iter_mut().enumerate().take(record.level as usize) {
                    *slot = next_at(&record, i as u8, end);
                }
                record.check_tail(&self.bytes)?;
                Some(record)
            }
            _ => None,
        };
        Ok(Location {
            found,
            back,
            forward,
        })
    }

    /// Sets `key` to `value` in the open transaction; nothing is written when the value
    /// is already so. Returns whether anything changed.
    pub fn set(
        &mut self,
        key: &[u8],
        value: &[u8],
        levels: &mut dyn LevelSource,
    ) -> Result<bool, TwoskipError> {
        if key.is_empty() {
            return Err(TwoskipError::EmptyKey);
        }
        let mut location = self.locate(key)?;
        if let Some(found) = &location.found
            && found.value(&self.bytes) == value
        {
            return Ok(false);
        }
        let mut max_level = 0;
        if let Some(found) = &location.found {
            max_level = found.level;
            self.header.num_records -= 1;
        }
        let level = levels.next_level().clamp(1, MAX_LEVEL);
        let mut record = Record::new(RECORD, level);
        for i in 0..level as usize {
            record.next[i + 1] = location.forward[i];
        }
        max_level = max_level.max(level);
        let offset = self.append(&mut record, key, value);
        for slot in location.forward.iter_mut().take(level as usize) {
            *slot = offset;
        }
        self.stitch(&location, max_level)?;
        self.header.num_records += 1;
        Ok(true)
    }

    /// Removes `key` in the open transaction. Returns whether it was there.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, TwoskipError> {
        let mut location = self.locate(key)?;
        let Some(found) = location.found.take() else {
            return Ok(false);
        };
        self.header.num_records -= 1;
        let successor = read_skipping_delete(&self.bytes, location.forward[0])?
            .map(|r| r.offset)
            .unwrap_or(0);
        let mut record = Record::new(DELETE, 0);
        record.next[0] = successor;
        let offset = self.append(&mut record, &[], &[]);
        location.forward[0] = offset;
        self.stitch(&location, found.level)?;
        Ok(true)
    }

    /// Cyrus's `stitch`: points the records before the change at what follows it, on
    /// every level below `max_level`.
    fn stitch(&mut self, location: &Location, max_level: u8) -> Result<(), TwoskipError> {
        let mut done = 0u8;
        while done < max_level {
            let level = done;
            let mut record = self.read(location.back[level as usize])?;
            if record.level <= level {
                return Err(TwoskipError::Record {
                    offset: record.offset,
                    what: "back pointer to a record below its level",
                });
            }
            for i in level..max_level {
                set_next(
                    &mut record,
                    i,
                    location.forward[i as usize],
                    self.header.current_size,
                );
            }
            self.rewrite(&record);
            done = record.level;
        }
        Ok(())
    }

    /// Rewrites a record's head in place.
    fn rewrite(&mut self, record: &Record) {
        let head = record.encode_head();
        let at = record.offset as usize;
        self.bytes[at..at + head.len()].copy_from_slice(&head);
        if record.offset < self.header.current_size {
            self.rewritten.insert(record.offset, head);
        }
        self.dirty = true;
    }

    /// Appends a record after BLANK padding; returns its offset.
    fn append(&mut self, record: &mut Record, key: &[u8], value: &[u8]) -> u64 {
        record.key_len = key.len() as u64;
        record.value_len = value.len() as u64;
        for _ in 0..blanks_before(self.end(), record.head_len()) {
            self.bytes.extend_from_slice(BLANK);
        }
        let offset = self.end();
        record.offset = offset;
        append_record(&mut self.bytes, record, key, value);
        self.dirty = true;
        offset
    }

    fn dirty_header(&self) -> [u8; HEADER_SIZE] {
        let mut header = self.header;
        header.flags |= FLAG_DIRTY;
        header.encode()
    }

    /// Ends the transaction: a COMMIT record, then the new committed size. `None` when
    /// nothing changed (Cyrus writes nothing then either).
    pub fn commit(&mut self) -> Option<WritePlan> {
        if !self.dirty {
            return None;
        }
        let dirty_header = (!self.header.is_dirty()).then(|| self.dirty_header());
        let started_at = self.header.current_size;
        let header = self.append_commit(started_at);
        Some(WritePlan {
            dirty_header,
            heads: std::mem::take(&mut self.rewritten).into_iter().collect(),
            append: Some((started_at, self.bytes[started_at as usize..].to_vec())),
            truncate_to: None,
            header,
        })
    }

    /// A complete file holding `entries` (keys strictly ascending), written as Cyrus's
    /// checkpoint writes its copy: every record appended in key order in one transaction,
    /// repack size at the end before the COMMIT. The same bytes as setting each key in
    /// turn into an empty file, in one pass instead of one skiplist walk per key.
    pub fn compact<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        entries: &[(K, V)],
        generation: u64,
        levels: &mut dyn LevelSource,
    ) -> Result<Image, TwoskipError> {
        let mut image = Image::empty();
        image.header.generation = generation;
        let started_at = image.header.current_size;
        // Where each record goes (its level and offset), as appending them would place
        // them, BLANKs included.
        let mut layout: Vec<(u8, u64)> = Vec::with_capacity(entries.len());
        let mut end = image.end();
        let mut previous: Option<&[u8]> = None;
        for (key, value) in entries {
            let (key, value) = (key.as_ref(), value.as_ref());
            if key.is_empty() {
                return Err(TwoskipError::EmptyKey);
            }
            if previous.is_some_and(|previous| previous >= key) {
                return Err(TwoskipError::Format(
                    "keys to compact are not in strict order",
                ));
            }
            previous = Some(key);
            let mut record = Record::new(RECORD, levels.next_level().clamp(1, MAX_LEVEL));
            record.key_len = key.len() as u64;
            record.value_len = value.len() as u64;
            let head_len = record.head_len();
            end += 8 * blanks_before(end, head_len);
            layout.push((record.level, end));
            end += head_len + super::format::padded(record.key_len + record.value_len);
        }
        // Each record points, on every level it is on, at the next record as tall: found
        // walking back from the end.
        let mut following = [0u64; MAX_LEVEL as usize];
        let mut pointers = vec![0u64; layout.iter().map(|&(level, _)| level as usize).sum()];
        let mut slot = pointers.len();
        for &(level, offset) in layout.iter().rev() {
            slot -= level as usize;
            for (i, next) in following.iter_mut().enumerate().take(level as usize) {
                pointers[slot + i] = *next;
                *next = offset;
            }
        }
        let point = |record: &mut Record, next: &[u64]| {
            for (level, &offset) in next.iter().enumerate() {
                set_next(record, level as u8, offset, started_at);
            }
        };
        let mut dummy = Record::new(DUMMY, MAX_LEVEL);
        point(&mut dummy, &following);
        let head = encode_record(&mut dummy, &[], &[]);
        image.bytes[DUMMY_OFFSET as usize..DUMMY_OFFSET as usize + head.len()]
            .copy_from_slice(&head);
        image.bytes.reserve((end - image.end()) as usize + 64);
        let mut next = pointers.as_slice();
        for ((key, value), &(level, offset)) in entries.iter().zip(&layout) {
            let mut record = Record::new(RECORD, level);
            let (mine, rest) = next.split_at(level as usize);
            point(&mut record, mine);
            next = rest;
            let appended = image.append(&mut record, key.as_ref(), value.as_ref());
            debug_assert_eq!(
                appended, offset,
                "the layout places records as appending does"
            );
        }
        image.header.num_records = entries.len() as u64;
        if entries.is_empty() {
            // Cyrus's copy of an empty file is a new file of the next generation.
            let header = image.header.encode();
            image.bytes[..HEADER_SIZE].copy_from_slice(&header);
        } else {
            image.header.repack_size = image.end();
            image.append_commit(started_at);
        }
        Ok(image)
    }

    /// Appends the COMMIT of a transaction begun at `started_at` and makes the header
    /// say so (clean, the new committed size); returns that header.
    fn append_commit(&mut self, started_at: u64) -> [u8; HEADER_SIZE] {
        let mut commit = Record::new(COMMIT, 0);
        commit.next[0] = started_at;
        self.append(&mut commit, &[], &[]);
        self.header.current_size = self.end();
        self.header.flags &= !FLAG_DIRTY;
        let header = self.header.encode();
        self.bytes[..HEADER_SIZE].copy_from_slice(&header);
        self.dirty = false;
        header
    }

    /// Cyrus's `recovery1`: rebuilds every list from the committed level-0 chain, drops
    /// uncommitted pointers and bytes, recounts. Fails (as Cyrus's does) only when a
    /// committed record is damaged or out of order.
    pub fn recover(&mut self) -> Result<Option<WritePlan>, TwoskipError> {
        if !self.needs_recovery() {
            return Ok(None);
        }
        let end = self.header.current_size;
        if end <= HEADER_SIZE as u64 || end > self.end() {
            return Err(TwoskipError::Format(
                "committed size beyond the end of the file",
            ));
        }
        let dirty_header = (!self.header.is_dirty()).then(|| self.dirty_header());
        self.bytes.truncate(end as usize);
        let mut previous = self.read(DUMMY_OFFSET)?;
        let mut previous_at = [0u64; LEVELS];
        let mut expected = [0u64; LEVELS];
        for i in 2..LEVELS {
            previous_at[i] = previous.offset;
            expected[i] = previous.next[i];
        }
        self.drop_uncommitted_level0(&mut previous, end);
        let mut offset = next_at(&previous, 0, end);
        let mut count = 0;
        while offset != 0 {
            let mut record = self.read(offset)?;
            if record.kind == DELETE {
                offset = record.next[0];
                continue;
            }
            if record.kind != RECORD || record.key(&self.bytes) <= previous.key(&self.bytes) {
                return Err(TwoskipError::Record {
                    offset,
                    what: "keys out of order on level 0",
                });
            }
            for i in 2..=record.level as usize {
                if expected[i] != record.offset {
                    let mut fix = self.read(previous_at[i])?;
                    fix.next[i] = record.offset;
                    self.rewrite(&fix);
                }
                previous_at[i] = record.offset;
                expected[i] = record.next[i];
            }
            self.drop_uncommitted_level0(&mut record, end);
            count += 1;
            offset = next_at(&record, 0, end);
            previous = record;
        }
        for i in 2..LEVELS {
            if expected[i] != 0 {
                let mut fix = self.read(previous_at[i])?;
                fix.next[i] = 0;
                self.rewrite(&fix);
            }
        }
        self.header.flags &= !FLAG_DIRTY;
        self.header.num_records = count;
        let header = self.header.encode();
        self.bytes[..HEADER_SIZE].copy_from_slice(&header);
        self.dirty = false;
        Ok(Some(WritePlan {
            dirty_header,
            heads: std::mem::take(&mut self.rewritten).into_iter().collect(),
            append: None,
            truncate_to: Some(end),
            header,
        }))
    }

    fn drop_uncommitted_level0(&mut self, record: &mut Record, end: u64) {
        let mut changed = false;
        for slot in &mut record.next[..2] {
            if *slot >= end {
                *slot = 0;
                changed = true;
            }
        }
        if changed {
            self.rewrite(record);
        }
    }

    /// Whether the open transaction has changed anything.
    pub fn is_changed(&self) -> bool {
        self.dirty
    }
}

/// Cyrus's `myconsistent` (`cyr_dbtool … consistent`): strict key order on level 0,
/// every higher level linking exactly the records of that height, no dangling tail, and
/// the header's record count.
pub fn check_consistent(file: &[u8]) -> Result<(), TwoskipError> {
    let header = Header::parse(file)?;
    let end = header.current_size;
    let broken = |offset, what| TwoskipError::Record { offset, what };
    let dummy = Record::read(file, DUMMY_OFFSET)?;
    let mut forward = [0u64; MAX_LEVEL as usize];
    for (i, slot) in forward.iter_mut().enumerate() {
        *slot = next_at(&dummy, i as u8, end);
    }
    let mut previous_key: Option<Vec<u8>> = None;
    let mut count = 0u64;
    let mut budget = file.len() / 24 + 1;
    while forward[0] != 0 {
        budget = budget
            .checked_sub(1)
            .ok_or(TwoskipError::Format("pointer cycle on level 0"))?;
        let record = Record::read(file, forward[0])?;
        if record.kind == DELETE {
            forward[0] = record.next[0];
            continue;
        }
        let key = record.key(file);
        if record.kind != RECORD || previous_key.as_deref().is_some_and(|p| p >= key) {
            return Err(broken(record.offset, "keys out of order"));
        }
        for (i, slot) in forward.iter_mut().enumerate().take(record.level as usize) {
            if *slot != record.offset {
                return Err(broken(record.offset, "broken linkage"));
            }
            *slot = next_at(&record, i as u8, end);
        }
        count += 1;
        previous_key = Some(key.to_vec());
    }
    if let Some(dangling) = forward.iter().find(|&&f| f != 0) {
        return Err(broken(*dangling, "broken tail"));
    }
    if count != header.num_records {
        return Err(TwoskipError::Format("record count differs from the header"));
    }
    Ok(())
}
