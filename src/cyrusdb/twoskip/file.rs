//! A twoskip file on disk, shared with Cyrus processes: Cyrus's whole-file fcntl lock
//! protocol (taken as an open-file-description lock, which conflicts with Cyrus's
//! `F_SETLKW` locks but is not lost when another descriptor of the file is closed), the
//! inode check that follows a rename-over, recovery of a dirty file, commits in Cyrus's
//! three-sync order, and repacks built aside and renamed in.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{FlockOperation, fcntl_lock};

use super::TwoskipError;
use super::format::{Entry, HEADER_SIZE};
use super::image::{Image, LevelSource, WritePlan};

/// What identifies the file's contents as we last left them: if any of it differs at the
/// next lock, someone else wrote (or replaced) the file and the cached image is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    inode: (u64, u64),
    len: u64,
    modified: (i64, i64),
    header: [u8; HEADER_SIZE],
}

impl Stamp {
    fn of(file: &File) -> std::io::Result<Stamp> {
        let meta = file.metadata()?;
        let mut header = [0u8; HEADER_SIZE];
        if meta.len() >= HEADER_SIZE as u64 {
            file.read_exact_at(&mut header, 0)?;
        }
        Ok(Stamp {
            inode: (meta.dev(), meta.ino()),
            len: meta.len(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            header,
        })
    }
}

/// How one locked transaction went, for metrics and logs.
#[derive(Debug, Clone, Copy, Default)]
pub struct TransactionReport {
    /// Time spent waiting for the lock.
    pub lock_wait: Duration,
    /// Time the lock was held.
    pub held: Duration,
    /// Whether the file had to be re-read (someone else wrote or replaced it).
    pub reloaded: bool,
    /// Whether the file needed (and got) recovery first.
    pub recovered: bool,
}

/// A twoskip file this process writes.
pub struct TwoskipFile {
    path: PathBuf,
    file: File,
    cache: Option<(Stamp, Image)>,
    levels: Box<dyn LevelSource>,
}

impl std::fmt::Debug for TwoskipFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwoskipFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn open_path(path: &Path) -> Result<File, TwoskipError> {
    let existed = path.exists();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| TwoskipError::io(path, "open", e))?;
    if !existed {
        // Run as root, a new file would be root's and Cyrus's processes could not open it:
        // it belongs to whoever owns the directory (the cyrus user's configdirectory).
        if let Some(dir) = path.parent().and_then(|d| std::fs::metadata(d).ok()) {
            give_to(&file, dir.uid(), dir.gid());
        }
    }
    Ok(file)
}

/// Hands `file` to `uid`:`gid` where we may (as root); as anyone else it already is ours.
fn give_to(file: &File, uid: u32, gid: u32) {
    let owner = (
        rustix::fs::Uid::from_raw(uid),
        rustix::fs::Gid::from_raw(gid),
    );
    if let Err(error) = rustix::fs::fchown(file, Some(owner.0), Some(owner.1))
        && error != rustix::io::Errno::PERM
    {
        tracing::warn!(%error, "twoskip: could not give the file to its directory's owner");
    }
}

impl TwoskipFile {
    /// Opens `path`, creating an empty file (mode 0600) if there is none; the header is
    /// written at the first lock, as Cyrus does.
    pub fn open(path: &Path, levels: Box<dyn LevelSource>) -> Result<TwoskipFile, TwoskipError> {
        let file = open_path(path)?;
        // A copy being built when a previous process died is of no use to anyone.
        let _ = std::fs::remove_file(aside_path(path));
        Ok(TwoskipFile {
            path: path.to_path_buf(),
            file,
            cache: None,
            levels,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the write lock (following a rename-over, recovering a dirty file) and opens a
    /// transaction. Nothing reaches the file before [`Transaction::commit`].
    pub fn begin(&mut self) -> Result<Transaction<'_>, TwoskipError> {
        let started = Instant::now();
        self.lock_current()?;
        let lock_wait = started.elapsed();
        let locked_at = Instant::now();
        let mut report = TransactionReport {
            lock_wait,
            ..TransactionReport::default()
        };
        match self.load(&mut report) {
            Ok((stamp, image)) => Ok(Transaction {
                db: self,
                stamp,
                image,
                locked_at,
                report,
                finished: false,
            }),
            Err(error) => {
                self.unlock();
                Err(error)
            }
        }
    }

    /// A copy of the file as it is now, to read at leisure: the lock is held only to bring
    /// the cached image up to date, and the copy is taken after it is released.
    pub fn read_image(&mut self) -> Result<Image, TwoskipError> {
        drop(self.begin()?);
        match &self.cache {
            Some((_, image)) => Ok(image.clone()),
            None => Err(TwoskipError::Format("file changed while being read")),
        }
    }

    /// Locks the file now at `path`: lock, then check that the descriptor is still the file
    /// the path names (a Cyrus repack renames a new file over it), else reopen and relock.
    fn lock_current(&mut self) -> Result<(), TwoskipError> {
        loop {
            fcntl_lock(&self.file, FlockOperation::LockExclusive)
                .map_err(|e| TwoskipError::io(&self.path, "lock", e.into()))?;
            let held = self
                .file
                .metadata()
                .map_err(|e| TwoskipError::io(&self.path, "fstat", e))?;
            match std::fs::metadata(&self.path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    self.unlock();
                    return Err(TwoskipError::io(&self.path, "stat", e));
                }
            }
            self.unlock();
            self.file = open_path(&self.path)?;
            self.cache = None;
        }
    }

    fn unlock(&self) {
        if let Err(error) = fcntl_lock(&self.file, FlockOperation::Unlock) {
            tracing::warn!(path = %self.path.display(), %error, "unlocking the twoskip file");
        }
    }

    /// The image of the locked file: the cached one if nobody touched the file since our
    /// last commit, else read afresh (created, or recovered, as Cyrus would).
    fn load(&mut self, report: &mut TransactionReport) -> Result<(Stamp, Image), TwoskipError> {
        let stamp = self.stamp()?;
        if let Some((cached, image)) = self.cache.take()
            && cached == stamp
        {
            return Ok((stamp, image));
        }
        report.reloaded = true;
        let mut bytes = Vec::with_capacity(stamp.len as usize);
        let mut reader = &self.file;
        reader
            .seek(SeekFrom::Start(0))
            .and_then(|_| reader.read_to_end(&mut bytes))
            .map_err(|e| TwoskipError::io(&self.path, "read", e))?;
        if bytes.is_empty() {
            // No sync under the lock: a crash leaves the file empty (Cyrus then writes the
            // same header itself) or holding it, and our first commit syncs it anyway. A
            // sync here, while the disk is busy, kept a lookup waiting 15 ms.
            let image = Image::empty();
            self.write_all_at(image.bytes(), 0)?;
            return Ok((self.stamp()?, image));
        }
        let mut image = Image::from_bytes(bytes)?;
        if let Some(plan) = image.recover()? {
            tracing::info!(path = %self.path.display(), "twoskip: recovered a dirty file");
            report.recovered = true;
            self.carry_out(&plan)?;
        }
        Ok((self.stamp()?, image))
    }

    fn stamp(&self) -> Result<Stamp, TwoskipError> {
        Stamp::of(&self.file).map_err(|e| TwoskipError::io(&self.path, "stat", e))
    }

    fn write_all_at(&self, bytes: &[u8], offset: u64) -> Result<(), TwoskipError> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| TwoskipError::io(&self.path, "write", e))
    }

    fn sync(&self, everything: bool) -> Result<(), TwoskipError> {
        let synced = if everything {
            self.file.sync_all()
        } else {
            self.file.sync_data()
        };
        synced.map_err(|e| TwoskipError::io(&self.path, "sync", e))
    }

    /// Writes a plan in Cyrus's order: dirty header, sync; heads and appended bytes (and
    /// truncation); sync; clean header, sync. A crash anywhere leaves a file that
    /// recovery (ours or Cyrus's recovery1) returns to the last committed state.
    fn carry_out(&self, plan: &WritePlan) -> Result<(), TwoskipError> {
        if let Some(dirty) = &plan.dirty_header {
            self.write_all_at(dirty, 0)?;
            self.sync(false)?;
        }
        for (offset, head) in &plan.heads {
            self.write_all_at(head, *offset)?;
        }
        if let Some((offset, bytes)) = &plan.append {
            self.write_all_at(bytes, *offset)?;
        }
        if let Some(len) = plan.truncate_to {
            self.file
                .set_len(len)
                .map_err(|e| TwoskipError::io(&self.path, "truncate", e))?;
        }
        self.sync(true)?;
        self.write_all_at(&plan.header, 0)?;
        self.sync(false)
    }

    /// Replaces the file by a compact copy when Cyrus's rule asks for one (over 16834
    /// bytes and twice the size after the last repack). Returns whether it repacked.
    pub fn repack_if_due(&mut self) -> Result<bool, TwoskipError> {
        let entries = match &self.cache {
            Some((_, image)) if image.header().wants_repack() => image.entries()?,
            _ => return Ok(false),
        };
        Ok(self.rewrite_if_unchanged(&entries, "repack")?.is_some())
    }

    /// Replaces the whole file by one holding exactly `entries` (keys ascending), as a
    /// Cyrus checkpoint does: the copy is built and synced under a private name without
    /// holding the lock, with the next generation; the lock is taken only to check that
    /// the file is still what this handle last read or wrote, and to rename the copy in.
    /// `None` when someone else wrote meanwhile (the file is left as it is).
    pub fn rewrite_if_unchanged<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &mut self,
        entries: &[(K, V)],
        why: &'static str,
    ) -> Result<Option<TransactionReport>, TwoskipError> {
        let Some((stamp, image)) = &self.cache else {
            return Ok(None);
        };
        let stamp = stamp.clone();
        let copy = Image::compact(entries, image.header().generation + 1, self.levels.as_mut())?;
        let aside = aside_path(&self.path);
        let _ = std::fs::remove_file(&aside);
        let new_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&aside)
            .map_err(|e| TwoskipError::io(&aside, "create", e))?;
        // The copy replaces the file: it keeps the file's owner.
        if let Ok(meta) = self.file.metadata() {
            give_to(&new_file, meta.uid(), meta.gid());
        }
        let written = new_file
            .write_all_at(copy.bytes(), 0)
            .and_then(|()| new_file.sync_all());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&aside);
            return Err(TwoskipError::io(&aside, "write", e));
        }
        let asked = Instant::now();
        self.lock_current()?;
        let locked_at = Instant::now();
        let unchanged = Stamp::of(&self.file).is_ok_and(|now| now == stamp);
        if !unchanged {
            self.unlock();
            let _ = std::fs::remove_file(&aside);
            return Ok(None);
        }
        let renamed = std::fs::rename(&aside, &self.path);
        self.unlock();
        let report = TransactionReport {
            lock_wait: locked_at - asked,
            held: locked_at.elapsed(),
            ..TransactionReport::default()
        };
        // The directory is synced after the lock is let go: readers need only the rename,
        // and a crash before the sync leaves the old file, which is complete too.
        let renamed = renamed.and_then(|()| sync_directory(&self.path));
        if let Err(e) = renamed {
            let _ = std::fs::remove_file(&aside);
            return Err(TwoskipError::io(&self.path, "rename", e));
        }
        tracing::info!(
            path = %self.path.display(),
            why,
            records = copy.header().num_records,
            from_bytes = stamp.len,
            to_bytes = copy.bytes().len(),
            "twoskip: file rewritten and renamed in"
        );
        let new_stamp =
            Stamp::of(&new_file).map_err(|e| TwoskipError::io(&self.path, "stat", e))?;
        self.file = new_file;
        self.cache = Some((new_stamp, copy));
        Ok(Some(report))
    }
}

/// Where a whole new file is built before it is renamed over `path`: beside it (a rename
/// stays on one filesystem), hidden, and not Cyrus's own `<file>.NEW`, which Cyrus removes.
fn aside_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.mupdate-repack"))
}

fn sync_directory(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) => File::open(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })?
        .sync_all(),
        None => Ok(()),
    }
}

/// A locked transaction on a twoskip file: reads see its own changes; the file changes
/// only at [`Transaction::commit`]; dropping it without commit changes nothing.
pub struct Transaction<'a> {
    db: &'a mut TwoskipFile,
    stamp: Stamp,
    image: Image,
    locked_at: Instant,
    report: TransactionReport,
    finished: bool,
}

impl Transaction<'_> {
    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<&[u8]>, TwoskipError> {
        self.image.get(key)
    }

    /// Every live key and value, in order.
    pub fn entries(&self) -> Result<Vec<Entry>, TwoskipError> {
        self.image.entries()
    }

    /// Sets `key` to `value`; returns whether anything changed.
    pub fn set(&mut self, key: &[u8], value: &[u8]) -> Result<bool, TwoskipError> {
        self.image.set(key, value, self.db.levels.as_mut())
    }

    /// Removes `key`; returns whether it was there.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, TwoskipError> {
        self.image.delete(key)
    }

    /// Live records after this transaction's changes.
    pub fn len(&self) -> u64 {
        self.image.header().num_records
    }

    /// Whether the file holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How long the lock has been held so far.
    pub fn held(&self) -> Duration {
        self.locked_at.elapsed()
    }

    /// Makes the changes durable (three syncs, as Cyrus) and releases the lock.
    pub fn commit(mut self) -> Result<TransactionReport, TwoskipError> {
        self.finished = true;
        let mut image = std::mem::replace(&mut self.image, Image::empty());
        let result = match image.commit() {
            None => Ok(()),
            Some(plan) => self.db.carry_out(&plan),
        };
        self.db.cache = match &result {
            Ok(()) => Stamp::of(&self.db.file).ok().map(|stamp| (stamp, image)),
            // The file may be half written: the next lock re-reads and recovers it.
            Err(_) => None,
        };
        self.db.unlock();
        self.report.held = self.locked_at.elapsed();
        result.map(|()| self.report)
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Abandoned: the file is untouched. An image without changes is still the file.
        if !self.image.is_changed() {
            let image = std::mem::replace(&mut self.image, Image::empty());
            self.db.cache = Some((self.stamp.clone(), image));
        } else {
            self.db.cache = None;
        }
        self.db.unlock();
    }
}
