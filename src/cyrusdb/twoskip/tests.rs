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
        let packed = image.repacked(&mut levels).unwrap();
        let read: BTreeMap<_, _> = format::entries(packed.bytes()).unwrap().into_iter().collect();
        prop_assert_eq!(&read, &model);
        check_consistent(packed.bytes()).unwrap();
        prop_assert_eq!(packed.header().generation, 2);
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
