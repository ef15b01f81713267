//! Samples /proc for a process and every process it starts (children, grandchildren, …)
//! while it runs: argv, environment, uids, the core-size limit and who owns its /proc
//! files (the kernel hands a non-dumpable process's /proc/<pid>/* to root).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One look at one process.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub exe: Option<PathBuf>,
    pub argv: Vec<String>,
    pub env: Vec<String>,
    /// Real uid (from status).
    pub uid: u32,
    /// Owner of /proc/<pid>/status: root for a non-dumpable process of another user.
    pub proc_owner: u32,
    /// "Max core file size" soft and hard limit, as /proc/<pid>/limits shows them.
    pub core_limit: Option<(String, String)>,
}

impl ProcInfo {
    /// argv and environment as one text, for the canary checks.
    pub fn text(&self) -> String {
        format!("{}\n{}", self.argv.join(" "), self.env.join("\n"))
    }
}

/// NUL-separated /proc strings.
pub fn split0(b: &[u8]) -> Vec<String> {
    b.split(|c| *c == 0).filter(|s| !s.is_empty()).map(|s| String::from_utf8_lossy(s).into_owned()).collect()
}

/// Every pid in /proc now.
pub fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_string_lossy().parse().ok()).collect())
        .unwrap_or_default()
}

fn ppid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    stat[stat.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
}

/// Read one process (None when it is gone or half-gone).
pub fn read_proc(pid: i32) -> Option<ProcInfo> {
    use std::os::unix::fs::MetadataExt;
    let dir = PathBuf::from(format!("/proc/{pid}"));
    // Not the directory itself: the kernel exempts /proc/<pid>/ from the rule.
    let proc_owner = std::fs::metadata(dir.join("status")).ok()?.uid();
    let status = std::fs::read_to_string(dir.join("status")).ok()?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.parse().ok()?;
    let limits = std::fs::read_to_string(dir.join("limits")).ok()?;
    let core_limit = limits.lines().find_map(|l| l.strip_prefix("Max core file size")).map(|rest| {
        let mut f = rest.split_whitespace();
        (f.next().unwrap_or_default().to_string(), f.next().unwrap_or_default().to_string())
    });
    Some(ProcInfo {
        pid,
        ppid: ppid(pid)?,
        exe: std::fs::read_link(dir.join("exe")).ok(),
        argv: split0(&std::fs::read(dir.join("cmdline")).ok()?),
        env: split0(&std::fs::read(dir.join("environ")).ok()?),
        uid,
        proc_owner,
        core_limit,
    })
}

/// Samples `root` and its descendants every few ms until finished; keeps each distinct
/// look (a fork and its exec show different argv/environments under one pid).
pub struct ProcWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<ProcInfo>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProcWatch {
    pub fn start(root: u32) -> ProcWatch {
        let (stop, seen) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(BTreeSet::new())));
        let (s2, out) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            // Pids known to be ours; a child whose parent already exited is missed only
            // if both lived less than one tick.
            let mut ours: BTreeSet<i32> = BTreeSet::from([root as i32]);
            while !s2.load(Ordering::SeqCst) {
                let parents: HashMap<i32, i32> = pids().into_iter().filter_map(|p| Some((p, ppid(p)?))).collect();
                loop {
                    let before = ours.len();
                    let new: Vec<i32> = parents
                        .iter()
                        .filter(|(p, pp)| ours.contains(pp) && !ours.contains(p))
                        .map(|(p, _)| *p)
                        .collect();
                    ours.extend(new);
                    if ours.len() == before {
                        break;
                    }
                }
                for p in ours.iter().filter(|p| parents.contains_key(p)) {
                    if let Some(info) = read_proc(*p) {
                        out.lock().unwrap().insert(info);
                    }
                }
                std::thread::sleep(Duration::from_millis(3));
            }
        });
        ProcWatch { stop, seen, thread: Some(thread) }
    }

    pub fn finish(mut self) -> Vec<ProcInfo> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap();
        self.seen.lock().unwrap().iter().cloned().collect()
    }
}

/// Samples of processes running `exe`.
pub fn running<'a>(samples: &'a [ProcInfo], exe: &'a Path) -> impl Iterator<Item = &'a ProcInfo> {
    samples.iter().filter(move |s| s.exe.as_deref() == Some(exe))
}
