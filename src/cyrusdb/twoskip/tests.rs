use std::collections::BTreeMap;

use proptest::prelude::*;

use super::format::{self, Header};
use super::image::{Image, LevelSource, WritePlan, check_consistent};

/// Levels from a fixed list, cycled: deterministic files.
struct Cycle(Vec<u8>, usize);

impl LevelSource for Cycle {
    fn next_level(&mut self) -> u8 {
        let level = self.0[self.1 % self.0.len()];
        self.1 += 1;
        level
    }
}

#[derive(Debug, Clone)]
enum Op {
    Set(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

fn arb_op() -> impl Strategy<Value = Op> {
    let key = proptest::collection::vec(b'a'..=b'e', 1..4);
    prop_oneof![
        3 => (key.clone(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(k, v)| Op::Set(k, v)),
        1 => key.prop_map(Op::Delete),
    ]
}

/// Applies a plan to `file` as the file layer would, stopping after `writes` writes
/// (a crash), or completely with `None`.
fn carry_out(file: &mut Vec<u8>, plan: &WritePlan, writes: Option<usize>) {
    let mut steps: Vec<(u64, Vec<u8>)> = Vec::new();
    if let Some(dirty) = plan.dirty_header {
        steps.push((0, dirty.to_vec()));
    }
    steps.extend(plan.heads.iter().cloned());
    if let Some(append) = &plan.append {
        steps.push(append.clone());
    }
    let truncate_at = steps.len();
    steps.push((0, plan.header.to_vec()));
    for (i, (offset, bytes)) in steps.iter().enumerate() {
        if writes.is_some_and(|limit| i >= limit) {
            return;
        }
        if i == truncate_at
            && let Some(len) = plan.truncate_to
        {
            file.truncate(len as usize);
        }
        let (offset, end) = (*offset as usize, *offset as usize + bytes.len());
        if file.len() < end {
            file.resize(end, 0);
        }
        file[offset..end].copy_from_slice(bytes);
    }
}

fn apply(
    image: &mut Image,
    ops: &[Op],
    levels: &mut dyn LevelSource,
    model: &mut BTreeMap<Vec<u8>, Vec<u8>>,
) {
    for op in ops {
        match op {
            Op::Set(k, v) => {
                image.set(k, v, levels).unwrap();
                model.insert(k.clone(), v.clone());
            }
            Op::Delete(k) => {
                image.delete(k).unwrap();
                model.remove(k);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Transactions of random changes: the file always reads back as the model, is
    /// consistent by Cyrus's rules, and a crash after any write of a commit recovers to
    /// exactly the state before or after it.
    #[test]
    fn transactions_match_a_model_and_survive_crashes(
        txns in proptest::collection::vec(proptest::collection::vec(arb_op(), 1..12), 1..12),
        crash_at in 0usize..40,
    ) {
        let mut levels = super::RandomLevels;
        let mut image = Image::empty();
        let mut file = image.bytes().to_vec();
        let mut model = BTreeMap::new();
        for ops in &txns {
            let before = model.clone();
            apply(&mut image, ops, &mut levels, &mut model);
            let Some(plan) = image.commit() else {
                prop_assert_eq!(&before, &model);
                continue;
            };
            let mut crashed = file.clone();
            carry_out(&mut crashed, &plan, Some(crash_at));
            let mut recovered = Image::from_bytes(crashed).unwrap();
            recovered.recover().unwrap();
            let got: BTreeMap<_, _> = recovered.entries().unwrap().into_iter().collect();
            prop_assert!(got == before || got == model);
            check_consistent(recovered.bytes()).unwrap();
            carry_out(&mut file, &plan, None);
            prop_assert_eq!(&file, &image.bytes().to_vec());
            let read: BTreeMap<_, _> = format::entries(&file).unwrap().into_iter().collect();
            prop_assert_eq!(&read, &model);
            check_consistent(&file).unwrap();
        }
        let packed = Image::compact(&image.entries().unwrap(), image.header().generation + 1, &mut levels).unwrap();
        let read: BTreeMap<_, _> = format::entries(packed.bytes()).unwrap().into_iter().collect();
        prop_assert_eq!(&read, &model);
        check_consistent(packed.bytes()).unwrap();
        prop_assert_eq!(packed.header().generation, 2);
    }

    /// A compact file built in one pass is byte for byte the file that setting the same
    /// keys one by one, with the same levels, into an empty file and committing makes.
    #[test]
    fn a_compact_build_equals_sets_in_one_transaction(
        model in proptest::collection::btree_map(
            proptest::collection::vec(any::<u8>(), 1..12),
            proptest::collection::vec(any::<u8>(), 0..700),
            0..80,
        ),
        levels in proptest::collection::vec(1u8..=31, 1..16),
    ) {
        let entries: Vec<_> = model.into_iter().collect();
        let mut by_set = Image::empty();
        let mut cycle = Cycle(levels.clone(), 0);
        for (key, value) in &entries {
            by_set.set(key, value, &mut cycle).unwrap();
        }
        let generation = 7;
        let built = Image::compact(&entries, generation, &mut Cycle(levels, 0)).unwrap();
        // Cyrus's copy: repack size is the end before the COMMIT, and a generation of its own.
        let before_commit = by_set.bytes().len() as u64;
        let mut want = by_set.bytes().to_vec();
        if by_set.commit().is_some() {
            want = by_set.bytes().to_vec();
            let mut header = *by_set.header();
            header.generation = generation;
            header.repack_size = before_commit;
            want[..format::HEADER_SIZE].copy_from_slice(&header.encode());
        }
        prop_assert_eq!(built.header().generation, generation);
        prop_assert_eq!(format::entries(built.bytes()).unwrap(), entries.clone());
        check_consistent(built.bytes()).unwrap();
        if !entries.is_empty() {
            prop_assert_eq!(built.bytes(), want.as_slice());
        }
    }

    /// Any bytes: the reader answers with records or an error, never a panic.
    #[test]
    fn the_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = format::entries(&bytes);
        let _ = check_consistent(&bytes);
        if let Ok(mut image) = Image::from_bytes(bytes) {
            let _ = image.recover();
        }
    }
}

#[test]
fn a_fresh_file_with_one_record_is_cyrus_worked_example() {
    // cyrus-twoskip-and-frontend.md §1: header gen 1, num 1, repack 0x150, current
    // 0x1C0; RECORD at 0x150 (level 1, key 9, value 0x28), COMMIT at 0x1A8.
    let mut image = Image::empty();
    image
        .set(b"Nuser\x1fbob", &[b'v'; 0x28], &mut Cycle(vec![1], 0))
        .unwrap();
    let plan = image.commit().unwrap();
    assert!(plan.dirty_header.is_some());
    let header = Header::parse(image.bytes()).unwrap();
    assert_eq!(
        (
            header.generation,
            header.num_records,
            header.repack_size,
            header.current_size
        ),
        (1, 1, 0x150, 0x1c0)
    );
    assert_eq!(
        &image.bytes()[0x150..0x158],
        b"\x2b\x01\x00\x09\x00\x00\x00\x28"
    );
    assert_eq!(image.bytes()[0x1a8], b'$');
    assert_eq!(&image.bytes()[0x1b0..0x1b8], &0x150u64.to_be_bytes());
}

#[test]
fn a_store_of_the_same_value_writes_nothing() {
    let mut levels = Cycle(vec![2, 1, 3], 0);
    let mut image = Image::empty();
    image.set(b"k", b"v", &mut levels).unwrap();
    image.commit().unwrap();
    assert!(!image.set(b"k", b"v", &mut levels).unwrap());
    assert!(!image.delete(b"missing").unwrap());
    assert!(image.commit().is_none());
}

#[test]
fn damage_is_an_error() {
    let mut image = Image::empty();
    image.set(b"key", b"value", &mut Cycle(vec![1], 0)).unwrap();
    image.commit().unwrap();
    let mut bytes = image.bytes().to_vec();
    // A flipped value byte: `show` stops (tail CRC) though the lists are consistent.
    let at = bytes.len() - 30;
    bytes[at] ^= 0x40;
    assert!(format::entries(&bytes).is_err());
    // A truncated file.
    assert!(format::entries(&image.bytes()[..0x160]).is_err());
    assert!(
        format::entries(b"not twoskip at all, not at all, not at all, not at all, no!").is_err()
    );
}

#[test]
fn a_rewrite_is_renamed_in_only_over_the_file_it_was_built_from() {
    use super::{RandomLevels, TwoskipFile};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mailboxes.db");
    let mut ours = TwoskipFile::open(&path, Box::new(RandomLevels)).unwrap();
    let mut txn = ours.begin().unwrap();
    txn.set(b"Na", b"1").unwrap();
    txn.commit().unwrap();
    let mut other = TwoskipFile::open(&path, Box::new(RandomLevels)).unwrap();
    let generation = Header::parse(&std::fs::read(&path).unwrap())
        .unwrap()
        .generation;

    // Someone else writes after our last look: our copy is not renamed in.
    ours.read_image().unwrap();
    let mut txn = other.begin().unwrap();
    txn.set(b"Nb", b"theirs").unwrap();
    txn.commit().unwrap();
    let wanted: Vec<(&[u8], &[u8])> = vec![(b"Na", b"1"), (b"Nc", b"3")];
    assert!(
        ours.rewrite_if_unchanged(&wanted, "test")
            .unwrap()
            .is_none()
    );
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(
        format::entries(&on_disk).unwrap(),
        vec![
            (b"Na".to_vec(), b"1".to_vec()),
            (b"Nb".to_vec(), b"theirs".to_vec())
        ]
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no copy left behind"
    );

    // Unchanged since our look: renamed in, next generation; the other handle follows it.
    ours.read_image().unwrap();
    assert!(
        ours.rewrite_if_unchanged(&wanted, "test")
            .unwrap()
            .is_some()
    );
    let on_disk = std::fs::read(&path).unwrap();
    check_consistent(&on_disk).unwrap();
    assert_eq!(Header::parse(&on_disk).unwrap().generation, generation + 1);
    let txn = other.begin().unwrap();
    assert_eq!(txn.get(b"Nc").unwrap(), Some(&b"3"[..]));
    assert_eq!(txn.get(b"Nb").unwrap(), None);
}
