//! Power-loss emulation for crash tests, loaded into a node with `LD_PRELOAD`.
//!
//! `kill -9` tests that a process recovers from dying at any point, but not that it fsyncs
//! what it acknowledges: the kernel keeps everything the process wrote in the page cache, and
//! a restarted process reads it back whether or not it was ever synced. A test of fsync needs
//! the unsynced writes to be lost, as they are when the power fails. Jepsen does that with
//! LazyFS, a FUSE file system; this machine has neither FUSE nor device-mapper, so this
//! library does the same one level up, at the process's calls into libc.
//!
//! With `KV_POWERLOSS_DATA=DIR` and `KV_POWERLOSS_JOURNAL=JDIR` in its environment, every
//! `write`, `pwrite`, `writev` and `ftruncate` the process makes to a file under `DIR` first
//! appends what it is about to overwrite (and the file's size) to an undo journal for that file
//! in `JDIR`; a successful `fsync` or `fdatasync` of the file empties its journal. After the
//! process is killed, `kv-powerloss revert JDIR` undoes every journalled write, newest first:
//! each file is left as its last fsync left it, as after a power failure where nothing written
//! since reached the disk. Renames and removals move and drop journals along with their files;
//! names themselves (a file created, renamed or removed without an fsync of its directory) are
//! not reverted.
//!
//! Without both variables every call goes straight to libc. A process's first call clears
//! journals left in `JDIR` by an earlier life that was not reverted (it stopped, the power did
//! not fail). A write and the fsync of its file are serialized per file, so that a journal
//! emptied by an fsync held only writes that fsync covered.
//!
//! This is the only unsafe code in the workspace: interposing on libc cannot be done without it.

use std::collections::HashMap;
use std::ffi::{CStr, OsStr, c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

pub mod journal;

type WriteFn = unsafe extern "C" fn(c_int, *const c_void, usize) -> isize;
type PwriteFn = unsafe extern "C" fn(c_int, *const c_void, usize, i64) -> isize;
type WritevFn = unsafe extern "C" fn(c_int, *const libc::iovec, c_int) -> isize;
type TruncFn = unsafe extern "C" fn(c_int, i64) -> c_int;
type FdFn = unsafe extern "C" fn(c_int) -> c_int;
type Dup2Fn = unsafe extern "C" fn(c_int, c_int) -> c_int;
type RenameFn = unsafe extern "C" fn(*const c_char, *const c_char) -> c_int;
type UnlinkFn = unsafe extern "C" fn(*const c_char) -> c_int;
type UnlinkatFn = unsafe extern "C" fn(c_int, *const c_char, c_int) -> c_int;

/// libc's own functions, found past this library.
struct Real {
    write: WriteFn,
    pwrite64: PwriteFn,
    writev: WritevFn,
    ftruncate64: TruncFn,
    fsync: FdFn,
    fdatasync: FdFn,
    close: FdFn,
    dup2: Dup2Fn,
    rename: RenameFn,
    unlink: UnlinkFn,
    unlinkat: UnlinkatFn,
}

fn real() -> &'static Real {
    static REAL: OnceLock<Real> = OnceLock::new();
    REAL.get_or_init(|| {
        fn sym(name: &CStr) -> *mut c_void {
            // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name.
            let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
            if p.is_null() {
                // No libc function to call: nothing this process does with files can work.
                // SAFETY: abort never returns.
                unsafe { libc::abort() }
            }
            p
        }
        // SAFETY: each symbol is libc's function of that name, whose C signature the type
        // spells out.
        unsafe {
            Real {
                write: std::mem::transmute::<*mut c_void, WriteFn>(sym(c"write")),
                pwrite64: std::mem::transmute::<*mut c_void, PwriteFn>(sym(c"pwrite64")),
                writev: std::mem::transmute::<*mut c_void, WritevFn>(sym(c"writev")),
                ftruncate64: std::mem::transmute::<*mut c_void, TruncFn>(sym(c"ftruncate64")),
                fsync: std::mem::transmute::<*mut c_void, FdFn>(sym(c"fsync")),
                fdatasync: std::mem::transmute::<*mut c_void, FdFn>(sym(c"fdatasync")),
                close: std::mem::transmute::<*mut c_void, FdFn>(sym(c"close")),
                dup2: std::mem::transmute::<*mut c_void, Dup2Fn>(sym(c"dup2")),
                rename: std::mem::transmute::<*mut c_void, RenameFn>(sym(c"rename")),
                unlink: std::mem::transmute::<*mut c_void, UnlinkFn>(sym(c"unlink")),
                unlinkat: std::mem::transmute::<*mut c_void, UnlinkatFn>(sym(c"unlinkat")),
            }
        }
    })
}

struct Config {
    /// The data directory as given, and resolved (symbolic links followed) once it exists.
    data: PathBuf,
    resolved: OnceLock<PathBuf>,
    journals: PathBuf,
}

fn config() -> Option<&'static Config> {
    static CONFIG: OnceLock<Option<Config>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let data = PathBuf::from(std::env::var_os("KV_POWERLOSS_DATA")?);
            let journals = PathBuf::from(std::env::var_os("KV_POWERLOSS_JOURNAL")?);
            if std::fs::create_dir_all(&journals).is_err() {
                return None;
            }
            // A new life: what an earlier one left unsynced was not lost.
            for e in std::fs::read_dir(&journals).into_iter().flatten().flatten() {
                if e.file_name()
                    .as_bytes()
                    .ends_with(journal::SUFFIX.as_bytes())
                {
                    unlink_real(&e.path());
                }
            }
            Some(Config {
                data,
                resolved: OnceLock::new(),
                journals,
            })
        })
        .as_ref()
}

impl Config {
    /// Whether `path` (absolute, with its directories resolved) lies under the data directory.
    fn covers(&self, path: &Path) -> bool {
        let root = match self.resolved.get() {
            Some(r) => r,
            None => match std::fs::canonicalize(&self.data) {
                Ok(r) => self.resolved.get_or_init(|| r),
                Err(_) => return false, // not made yet: nothing in it is open
            },
        };
        path.starts_with(root)
    }
}

fn unlink_real(path: &Path) {
    let mut c = path.as_os_str().as_bytes().to_vec();
    c.push(0);
    // SAFETY: a NUL-terminated path.
    unsafe { (real().unlink)(c.as_ptr().cast()) };
}

/// One data file's undo journal.
struct Journal {
    path: PathBuf,
    fd: c_int,
    /// Bytes of records after the header.
    len: u64,
    /// The file was removed or replaced: its writes are no longer journalled.
    dead: bool,
    file: PathBuf,
}

impl Journal {
    fn create(cfg: &Config, path: &Path) -> Option<Journal> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let header = journal::header(path)?;
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let file = cfg.journals.join(format!("{pid}-{n}{}", journal::SUFFIX));
        let mut c = file.as_os_str().as_bytes().to_vec();
        c.push(0);
        // SAFETY: a NUL-terminated path; open is not interposed here.
        let fd = unsafe {
            libc::open(
                c.as_ptr().cast(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC | libc::O_CLOEXEC,
                0o644,
            )
        };
        if fd < 0 {
            return None;
        }
        let j = Journal {
            path: path.to_path_buf(),
            fd,
            len: 0,
            dead: false,
            file,
        };
        j.put(0, &header);
        Some(j)
    }

    fn put(&self, mut at: u64, mut buf: &[u8]) {
        while !buf.is_empty() {
            // SAFETY: buf is a live slice; the journal's fd is open.
            let n =
                unsafe { (real().pwrite64)(self.fd, buf.as_ptr().cast(), buf.len(), at as i64) };
            if n <= 0 {
                die(&format!("cannot write the journal {}", self.file.display()));
            }
            buf = &buf[n as usize..];
            at += n as u64;
        }
    }

    fn append(&mut self, rec: &[u8]) {
        self.put(journal::HEADER + self.len, rec);
        self.len += rec.len() as u64;
    }

    /// Records what a write of `len` bytes to `fd` at `at` (or at its file position) will
    /// overwrite, and the size it will change.
    fn before_write(&mut self, fd: c_int, at: Option<i64>, len: u64) {
        if self.dead || len == 0 {
            return;
        }
        let Some(size) = file_size(fd) else { return };
        let off = match at {
            Some(o) => o as u64,
            None => {
                // SAFETY: fcntl F_GETFL and lseek on a descriptor the caller is writing to.
                let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
                if flags >= 0 && flags & libc::O_APPEND != 0 {
                    size
                } else {
                    match unsafe { libc::lseek64(fd, 0, libc::SEEK_CUR) } {
                        p if p >= 0 => p as u64,
                        _ => return,
                    }
                }
            }
        };
        let end = off.saturating_add(len);
        if end > size {
            self.append(&journal::size_record(size));
        }
        if off < size {
            self.save_bytes(fd, off, end.min(size) - off);
        }
    }

    fn before_truncate(&mut self, fd: c_int, len: u64) {
        if self.dead {
            return;
        }
        let Some(size) = file_size(fd) else { return };
        if len != size {
            self.append(&journal::size_record(size));
        }
        if len < size {
            self.save_bytes(fd, len, size - len);
        }
    }

    fn save_bytes(&mut self, fd: c_int, off: u64, n: u64) {
        let mut old = vec![0u8; n as usize];
        let mut got = read_at(fd, &mut old, off);
        if got.is_none() {
            // A write-only descriptor: read through the path, on a descriptor of this
            // library's own (opened and closed past the hooks).
            let mut c = self.path.as_os_str().as_bytes().to_vec();
            c.push(0);
            // SAFETY: a NUL-terminated path; open is not interposed here.
            let rd = unsafe { libc::open(c.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if rd >= 0 {
                got = read_at(rd, &mut old, off);
                // SAFETY: the descriptor just opened.
                unsafe { (real().close)(rd) };
            }
        }
        let Some(got) = got else {
            die(&format!(
                "cannot read {} to journal it",
                self.path.display()
            ))
        };
        old.truncate(got);
        if old.is_empty() {
            return;
        }
        self.append(&journal::bytes_record_head(off, old.len() as u64));
        self.append(&old);
    }

    fn synced(&mut self) {
        // SAFETY: the journal's own descriptor.
        unsafe { (real().ftruncate64)(self.fd, journal::HEADER as i64) };
        self.len = 0;
    }

    fn drop_file(&mut self) {
        self.dead = true;
        // SAFETY: the journal's own descriptor, closed once (dead is set).
        unsafe { (real().close)(self.fd) };
        unlink_real(&self.file);
    }
}

/// Reads up to `buf.len()` bytes at `off` (fewer at the end of the file); `None` if the
/// descriptor cannot be read.
fn read_at(fd: c_int, buf: &mut [u8], off: u64) -> Option<usize> {
    let mut got = 0usize;
    while got < buf.len() {
        // SAFETY: reading into the unfilled part of `buf`.
        let r = unsafe {
            libc::pread64(
                fd,
                buf[got..].as_mut_ptr().cast(),
                buf.len() - got,
                (off + got as u64) as i64,
            )
        };
        match r {
            0 => break,
            r if r < 0 => return None,
            r => got += r as usize,
        }
    }
    Some(got)
}

/// A journal that cannot be kept would make the emulation lose less than a power failure
/// does, and a crash test pass that should not: stop the process, saying why.
fn die(why: &str) -> ! {
    let msg = format!("kv-powerloss: {why}; stopping\n");
    // SAFETY: writing a live buffer to stderr, then abort, which never returns.
    unsafe {
        (real().write)(2, msg.as_ptr().cast(), msg.len());
        libc::abort()
    }
}

/// Whether `fd` is a regular file (a directory's fsync has nothing to journal).
fn is_regular(fd: c_int) -> bool {
    // SAFETY: a zeroed stat is a valid out-parameter for fstat64.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: fd is the caller's descriptor.
    unsafe { libc::fstat64(fd, &mut st) == 0 && st.st_mode & libc::S_IFMT == libc::S_IFREG }
}

fn file_size(fd: c_int) -> Option<u64> {
    // SAFETY: a zeroed stat is a valid out-parameter for fstat64.
    let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
    // SAFETY: fd is the caller's descriptor.
    (unsafe { libc::fstat64(fd, &mut st) } == 0).then_some(st.st_size as u64)
}

type Shared = Arc<Mutex<Journal>>;

#[derive(Default)]
struct Files {
    by_fd: HashMap<c_int, Shared>,
    by_path: HashMap<PathBuf, Shared>,
}

fn files() -> MutexGuard<'static, Files> {
    static FILES: OnceLock<Mutex<Files>> = OnceLock::new();
    FILES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

fn lock(j: &Shared) -> MutexGuard<'_, Journal> {
    j.lock().unwrap_or_else(PoisonError::into_inner)
}

const UNKNOWN: u8 = 0;
const PLAIN: u8 = 1;
const TRACKED: u8 = 2;
const KNOWN_FDS: usize = 1 << 16;
/// What each descriptor number is, so that sockets and pipes cost one atomic load.
static KIND: [AtomicU8; KNOWN_FDS] = [const { AtomicU8::new(UNKNOWN) }; KNOWN_FDS];

fn kind_slot(fd: c_int) -> Option<&'static AtomicU8> {
    usize::try_from(fd).ok().and_then(|i| KIND.get(i))
}

/// The journal of the data file `fd` writes to, if it is one.
fn tracked(fd: c_int) -> Option<Shared> {
    let cfg = config()?;
    let slot = kind_slot(fd);
    match slot.map(|s| s.load(Ordering::Acquire)) {
        Some(PLAIN) => return None,
        Some(TRACKED) => {
            if let Some(j) = files().by_fd.get(&fd) {
                return Some(j.clone());
            }
        }
        _ => {}
    }
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok();
    let path = link.filter(|p| {
        is_regular(fd)
            && p.is_absolute()
            && !p.as_os_str().as_bytes().ends_with(b" (deleted)")
            && cfg.covers(p)
    });
    let Some(path) = path else {
        if let Some(s) = slot {
            s.store(PLAIN, Ordering::Release);
        }
        return None;
    };
    let mut f = files();
    let j = match f.by_path.get(&path) {
        Some(j) => j.clone(),
        None => {
            let Some(j) = Journal::create(cfg, &path) else {
                die(&format!("cannot make a journal for {}", path.display()))
            };
            let j = Arc::new(Mutex::new(j));
            f.by_path.insert(path, j.clone());
            j
        }
    };
    f.by_fd.insert(fd, j.clone());
    if let Some(s) = slot {
        s.store(TRACKED, Ordering::Release);
    }
    Some(j)
}

/// `fd` no longer names what it did.
fn forget(fd: c_int) {
    if let Some(s) = kind_slot(fd)
        && s.swap(UNKNOWN, Ordering::AcqRel) == TRACKED
    {
        files().by_fd.remove(&fd);
    }
}

/// An absolute path for `p` (relative to `dirfd`, or the working directory), its directory
/// resolved; `None` if it is not under the data directory.
fn data_path(cfg: &Config, dirfd: c_int, p: *const c_char) -> Option<PathBuf> {
    if p.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated path from the caller.
    let p = Path::new(OsStr::from_bytes(unsafe { CStr::from_ptr(p) }.to_bytes()));
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else if dirfd == libc::AT_FDCWD {
        std::env::current_dir().ok()?.join(p)
    } else {
        std::fs::read_link(format!("/proc/self/fd/{dirfd}"))
            .ok()?
            .join(p)
    };
    let dir = std::fs::canonicalize(abs.parent()?).ok()?;
    let abs = dir.join(abs.file_name()?);
    cfg.covers(&abs).then_some(abs)
}

/// # Safety
/// libc's `write`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: usize) -> isize {
    let Some(j) = tracked(fd) else {
        // SAFETY: the caller's arguments, passed on.
        return unsafe { (real().write)(fd, buf, n) };
    };
    let mut g = lock(&j);
    g.before_write(fd, None, n as u64);
    // SAFETY: as above.
    unsafe { (real().write)(fd, buf, n) }
}

/// # Safety
/// libc's `pwrite64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwrite64(fd: c_int, buf: *const c_void, n: usize, off: i64) -> isize {
    let Some(j) = tracked(fd) else {
        // SAFETY: the caller's arguments, passed on.
        return unsafe { (real().pwrite64)(fd, buf, n, off) };
    };
    let mut g = lock(&j);
    g.before_write(fd, Some(off), n as u64);
    // SAFETY: as above.
    unsafe { (real().pwrite64)(fd, buf, n, off) }
}

/// # Safety
/// libc's `pwrite` (the same function as `pwrite64` on 64-bit Linux).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pwrite(fd: c_int, buf: *const c_void, n: usize, off: i64) -> isize {
    // SAFETY: the caller's arguments, passed on.
    unsafe { pwrite64(fd, buf, n, off) }
}

/// # Safety
/// libc's `writev`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> isize {
    let Some(j) = tracked(fd) else {
        // SAFETY: the caller's arguments, passed on.
        return unsafe { (real().writev)(fd, iov, cnt) };
    };
    let mut total = 0u64;
    if !iov.is_null() {
        for i in 0..usize::try_from(cnt).unwrap_or(0) {
            // SAFETY: the caller's array of `cnt` iovecs.
            total += unsafe { (*iov.add(i)).iov_len } as u64;
        }
    }
    let mut g = lock(&j);
    g.before_write(fd, None, total);
    // SAFETY: as above.
    unsafe { (real().writev)(fd, iov, cnt) }
}

/// # Safety
/// libc's `ftruncate64`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ftruncate64(fd: c_int, len: i64) -> c_int {
    let Some(j) = tracked(fd) else {
        // SAFETY: the caller's arguments, passed on.
        return unsafe { (real().ftruncate64)(fd, len) };
    };
    let mut g = lock(&j);
    g.before_truncate(fd, len.max(0) as u64);
    // SAFETY: as above.
    unsafe { (real().ftruncate64)(fd, len) }
}

/// # Safety
/// libc's `ftruncate` (the same function as `ftruncate64` on 64-bit Linux).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ftruncate(fd: c_int, len: i64) -> c_int {
    // SAFETY: the caller's arguments, passed on.
    unsafe { ftruncate64(fd, len) }
}

fn sync_with(fd: c_int, f: FdFn) -> c_int {
    let Some(j) = tracked(fd) else {
        // SAFETY: the caller's descriptor, passed on.
        return unsafe { f(fd) };
    };
    let mut g = lock(&j);
    // SAFETY: as above.
    let r = unsafe { f(fd) };
    if r == 0 && !g.dead {
        g.synced();
    }
    r
}

/// # Safety
/// libc's `fsync`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fsync(fd: c_int) -> c_int {
    sync_with(fd, real().fsync)
}

/// # Safety
/// libc's `fdatasync`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fdatasync(fd: c_int) -> c_int {
    sync_with(fd, real().fdatasync)
}

/// # Safety
/// libc's `close`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    forget(fd);
    // SAFETY: the caller's descriptor, passed on.
    unsafe { (real().close)(fd) }
}

/// # Safety
/// libc's `dup2`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    forget(new);
    // SAFETY: the caller's descriptors, passed on.
    unsafe { (real().dup2)(old, new) }
}

/// # Safety
/// libc's `rename`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rename(old: *const c_char, new: *const c_char) -> c_int {
    let Some(cfg) = config() else {
        // SAFETY: the caller's paths, passed on.
        return unsafe { (real().rename)(old, new) };
    };
    let from = data_path(cfg, libc::AT_FDCWD, old);
    let to = data_path(cfg, libc::AT_FDCWD, new);
    let mut f = files();
    // SAFETY: as above.
    let r = unsafe { (real().rename)(old, new) };
    if r == 0 {
        if let Some(to) = &to
            && let Some(j) = f.by_path.remove(to)
        {
            lock(&j).drop_file(); // the file it replaced is gone
        }
        if let Some(from) = from
            && let Some(j) = f.by_path.remove(&from)
        {
            match to {
                Some(to) => {
                    let mut g = lock(&j);
                    if let Some(h) = journal::header(&to) {
                        g.put(0, &h);
                    }
                    g.path = to.clone();
                    drop(g);
                    f.by_path.insert(to, j);
                }
                None => lock(&j).drop_file(), // moved out of the data directory
            }
        }
    }
    r
}

fn removed(path: Option<PathBuf>) {
    if let Some(p) = path
        && let Some(j) = files().by_path.remove(&p)
    {
        lock(&j).drop_file();
    }
}

/// # Safety
/// libc's `unlink`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unlink(p: *const c_char) -> c_int {
    let path = config().and_then(|cfg| data_path(cfg, libc::AT_FDCWD, p));
    // SAFETY: the caller's path, passed on.
    let r = unsafe { (real().unlink)(p) };
    if r == 0 {
        removed(path);
    }
    r
}

/// # Safety
/// libc's `unlinkat`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn unlinkat(dirfd: c_int, p: *const c_char, flags: c_int) -> c_int {
    let path = if flags & libc::AT_REMOVEDIR == 0 {
        config().and_then(|cfg| data_path(cfg, dirfd, p))
    } else {
        None
    };
    // SAFETY: the caller's arguments, passed on.
    let r = unsafe { (real().unlinkat)(dirfd, p, flags) };
    if r == 0 {
        removed(path);
    }
    r
}
