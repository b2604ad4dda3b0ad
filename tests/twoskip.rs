//! Our twoskip writer and reader against real Cyrus 3.6.1's `cyr_dbtool`: Cyrus reads
//! and checks what we write, we read what Cyrus writes, the same changes (or a whole file
//! built at once, as a Cyrus repack builds it) with the same levels give the same bytes,
//! our lock excludes Cyrus's, and a Cyrus repack under us breaks nothing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use mupdate::cyrusdb::twoskip::format::{BLANK, DUMMY_OFFSET, RECORD, Record};
use mupdate::cyrusdb::twoskip::{self, Image, LevelSource, RandomLevels, TwoskipFile};

const CYR_DBTOOL: &str = "/usr/lib/cyrus/bin/cyr_dbtool";

/// A private Cyrus configuration directory owned by the cyrus user (Cyrus tools refuse
/// to run as root).
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(test: &str) -> Option<Fixture> {
        if !common::cyrus_available(test, CYR_DBTOOL) {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = format!(
            "configdirectory: {0}\npartition-default: {0}/p\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("imapd.conf"), conf).expect("write imapd.conf");
        std::fs::create_dir_all(dir.path().join("db")).expect("db dir");
        let chown = Command::new("chown")
            .args(["-R", "cyrus"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(chown.success());
        Some(Fixture { dir })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn command(&self, db: &Path, args: &[&[u8]]) -> Command {
        use std::os::unix::ffi::OsStrExt;
        let mut command = Command::new("runuser");
        command
            .args(["-u", "cyrus", "--", CYR_DBTOOL, "-C"])
            .arg(self.path("imapd.conf"))
            .arg(db)
            .arg("twoskip");
        for arg in args {
            command.arg(std::ffi::OsStr::from_bytes(arg));
        }
        command
    }

    fn tool(&self, db: &Path, args: &[&[u8]]) -> Output {
        let output = self.command(db, args).output().expect("run cyr_dbtool");
        assert!(
            output.status.success(),
            "cyr_dbtool {:?}: {}",
            args.iter()
                .map(|a| String::from_utf8_lossy(a))
                .collect::<Vec<_>>(),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// `cyr_dbtool … consistent` on a copy (opening a file may recover it).
    fn consistent(&self, db: &Path) -> String {
        let copy = self.path("consistent-copy.db");
        std::fs::copy(db, &copy).expect("copy");
        chown_cyrus(&copy);
        let output = self.tool(&copy, &[b"consistent"]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `cyr_dbtool … show` on a copy, as raw bytes.
    fn show(&self, db: &Path) -> Vec<u8> {
        let copy = self.path("show-copy.db");
        std::fs::copy(db, &copy).expect("copy");
        chown_cyrus(&copy);
        self.tool(&copy, &[b"show"]).stdout
    }
}

fn chown_cyrus(path: &Path) {
    let status = Command::new("chown")
        .arg("cyrus")
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success());
}

/// What `show` prints for these entries: `key TAB value NL` each.
fn show_form(entries: &BTreeMap<Vec<u8>, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in entries {
        out.extend_from_slice(key);
        out.push(b'\t');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

/// Deterministic pseudo-random changes: keys like mailboxes.db keys, values like its
/// dlist values (no TAB or newline, so `show` output can be compared as a whole).
fn changes(seed: u64, count: usize) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut state = seed;
    let mut next = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    (0..count)
        .map(|_| {
            let key = format!("Nuser\x1fu{}\x1fbox{}", next() % 40, next() % 5).into_bytes();
            if next() % 4 == 0 {
                (key, None)
            } else {
                let value = format!(
                    "%(T er P default S be{} M {} A %(bob lrswipkxtecda))",
                    next() % 3,
                    1_796_000_000 + next() % 1000
                );
                (key, Some(value.into_bytes()))
            }
        })
        .collect()
}

#[test]
fn cyrus_reads_and_checks_what_we_write() {
    let Some(fx) = Fixture::new("cyrus_reads_and_checks_what_we_write") else {
        return;
    };
    let db = fx.path("ours.db");
    let mut file = TwoskipFile::open(&db, Box::new(RandomLevels)).expect("open");
    let mut model = BTreeMap::new();
    for (round, batch) in changes(7, 3000).chunks(50).enumerate() {
        let mut txn = file.begin().expect("lock");
        apply(&mut txn, batch, &mut model);
        txn.commit().expect("commit");
        file.repack_if_due().expect("repack");
        if round % 20 == 0 {
            assert_eq!(fx.consistent(&db), "Yes, consistent\n");
        }
    }
    chown_cyrus(&db);
    assert_eq!(fx.consistent(&db), "Yes, consistent\n");
    assert_eq!(fx.show(&db), show_form(&model));
    let ours: BTreeMap<_, _> = twoskip::entries(&std::fs::read(&db).expect("read"))
        .expect("our reader")
        .into_iter()
        .collect();
    assert_eq!(ours, model);
}

/// Applies `batch` in `txn` and to `model`.
fn apply(
    txn: &mut twoskip::Transaction<'_>,
    batch: &[(Vec<u8>, Option<Vec<u8>>)],
    model: &mut BTreeMap<Vec<u8>, Vec<u8>>,
) {
    for (key, value) in batch {
        match value {
            Some(value) => {
                txn.set(key, value).expect("set");
                model.insert(key.clone(), value.clone());
            }
            None => {
                txn.delete(key).expect("delete");
                model.remove(key);
            }
        }
    }
}

/// The level of every `+` record in file order, as Cyrus chose them.
fn levels_in(file: &[u8]) -> Vec<u8> {
    let mut levels = Vec::new();
    let mut offset = DUMMY_OFFSET;
    while (offset as usize) < file.len() {
        if file[offset as usize..].starts_with(BLANK) {
            offset += 8;
            continue;
        }
        let record = Record::read(file, offset).expect("a Cyrus record");
        if record.kind == RECORD {
            levels.push(record.level);
        }
        offset += record.len;
    }
    levels
}

struct Replay(std::vec::IntoIter<u8>);

impl LevelSource for Replay {
    fn next_level(&mut self) -> u8 {
        self.0.next().expect("as many levels as records")
    }
}

#[test]
fn we_read_what_cyrus_writes_and_write_the_same_bytes() {
    let Some(fx) = Fixture::new("we_read_what_cyrus_writes_and_write_the_same_bytes") else {
        return;
    };
    let db = fx.path("cyrus.db");
    std::fs::write(&db, b"").expect("create");
    chown_cyrus(&db);
    let sequence = changes(11, 120);
    let mut model = BTreeMap::new();
    for (key, value) in &sequence {
        match value {
            Some(value) => {
                fx.tool(&db, &[b"set", key, value]);
                model.insert(key.clone(), value.clone());
            }
            None => {
                // Cyrus's delete of a missing key fails; only delete what is there.
                if model.remove(key).is_some() {
                    fx.tool(&db, &[b"delete", key]);
                }
            }
        }
    }
    let cyrus_bytes = std::fs::read(&db).expect("read");
    let ours: BTreeMap<_, _> = twoskip::entries(&cyrus_bytes)
        .expect("our reader")
        .into_iter()
        .collect();
    assert_eq!(ours, model);
    assert_eq!(fx.show(&db), show_form(&model));

    // The same changes, one transaction each as cyr_dbtool made them, with Cyrus's levels.
    let mut levels = Replay(levels_in(&cyrus_bytes).into_iter());
    let mut image = Image::empty();
    let mut present = BTreeMap::new();
    for (key, value) in &sequence {
        match value {
            Some(value) => {
                image.set(key, value, &mut levels).expect("set");
                present.insert(key.clone(), ());
            }
            None => {
                if present.remove(key).is_some() {
                    image.delete(key).expect("delete");
                }
            }
        }
        image.commit();
    }
    assert_eq!(image.bytes(), cyrus_bytes.as_slice());

    // Cyrus's repack, and our one-pass build of a whole file, given Cyrus's levels: the
    // same bytes (what our slave renames in at its first sync is such a file).
    fx.tool(&db, &[b"repack"]);
    let repacked = std::fs::read(&db).expect("read the repacked file");
    let generation = twoskip::Header::parse(&repacked)
        .expect("header")
        .generation;
    assert_eq!(generation, 2);
    let entries: Vec<_> = model.into_iter().collect();
    let mut levels = Replay(levels_in(&repacked).into_iter());
    let built = Image::compact(&entries, generation, &mut levels).expect("compact");
    assert_eq!(built.bytes(), repacked.as_slice());
}

#[test]
fn our_lock_holds_cyrus_readers_and_a_cyrus_repack_breaks_nothing() {
    let Some(fx) = Fixture::new("our_lock_holds_cyrus_readers_and_a_cyrus_repack_breaks_nothing")
    else {
        return;
    };
    let db = fx.path("shared.db");
    let mut file = TwoskipFile::open(&db, Box::new(RandomLevels)).expect("open");
    let mut model = BTreeMap::new();
    {
        let mut txn = file.begin().expect("lock");
        txn.set(b"Nfirst", b"one").expect("set");
        model.insert(b"Nfirst".to_vec(), b"one".to_vec());
        txn.commit().expect("commit");
    }
    chown_cyrus(&db);

    // While our transaction holds the lock, a Cyrus lookup waits; it then sees the commit.
    let txn_value = b"two".to_vec();
    let mut txn = file.begin().expect("lock");
    txn.set(b"Nsecond", &txn_value).expect("set");
    let mut lookup = fx
        .command(&db, &[b"get", b"Nsecond"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn cyr_dbtool get");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        lookup.try_wait().expect("try_wait").is_none(),
        "cyr_dbtool get finished while we held the write lock"
    );
    txn.commit().expect("commit");
    model.insert(b"Nsecond".to_vec(), txn_value.clone());
    let output = lookup.wait_with_output().expect("wait");
    assert!(output.status.success());
    assert_eq!(output.stdout, b"two\n");

    // Cyrus repacks (a new file renamed over ours) between our transactions.
    for (round, batch) in changes(5, 400).chunks(40).enumerate() {
        if round % 3 == 1 {
            fx.tool(&db, &[b"repack"]);
        }
        let mut txn = file.begin().expect("lock");
        apply(&mut txn, batch, &mut model);
        txn.commit().expect("commit");
    }
    assert_eq!(fx.consistent(&db), "Yes, consistent\n");
    assert_eq!(fx.show(&db), show_form(&model));
}
