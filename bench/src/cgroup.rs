//! A CPU share for a process: a cgroup v1 `cpu` group with a CFS bandwidth quota
//! (`cpu.cfs_quota_us` per `cpu.cfs_period_us`), so that processes measured side by side each
//! get the same fraction of a core however busy the machine is (`cport bench cluster` holds
//! every zone to one).
//!
//! [`cpu_v1_root`] finds where the `cpu` controller of cgroup v1 is mounted (and says clearly
//! when it is not, or cannot be written); [`CpuGroup::create`] makes a group under it with a
//! quota, [`CpuGroup::add`] moves a process (all its threads) into it, [`CpuGroup::stat`]
//! reads its `cpu.stat` (periods, throttled periods, time throttled), which shows the quota
//! was in force. A group is removed when dropped, its processes first moved back to the root
//! group, so that an error or a panic in the caller leaves nothing behind; [`sweep_stale`]
//! removes the groups of a run that was killed before it could.

use std::io;
use std::path::{Path, PathBuf};

/// What [`cpu_v1_root`] looks for, and what this module says it used.
pub const MECHANISM: &str =
    "cgroup v1 cpu controller (CFS bandwidth: cpu.cfs_quota_us per cpu.cfs_period_us)";

/// The mount point of the cgroup v1 `cpu` controller in `mounts` (the text of
/// `/proc/self/mounts`): a mount of type `cgroup` whose options include `cpu` (alone, or
/// joined with `cpuacct`).
pub fn cpu_v1_mount(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (point, fstype, opts) = (f.get(1)?, f.get(2)?, f.get(3)?);
        (*fstype == "cgroup" && opts.split(',').any(|o| o == "cpu"))
            .then(|| PathBuf::from(unescape_mount(point)))
    })
}

/// `/proc/mounts` writes a space in a path as `\040` (and a tab, newline and backslash
/// likewise, in octal).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0')));
        match octal.and_then(|v| u8::try_from(v).ok()) {
            Some(v) => {
                out.push(v);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where the cgroup v1 `cpu` controller is mounted, checked to be usable: it is mounted, it
/// has the CFS bandwidth files, and a group can be made under it (this process may write
/// there: root, usually). An error that says which of these is missing otherwise (a machine
/// on cgroup v2 only, a container without the controller, a user without the right).
pub fn cpu_v1_root() -> io::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .map_err(|e| io::Error::new(e.kind(), format!("cannot read /proc/self/mounts: {e}")))?;
    let root = cpu_v1_mount(&mounts).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            "no cgroup v1 cpu controller is mounted (no `cgroup` mount with the `cpu` option in \
             /proc/self/mounts): this needs cgroup v1's cpu.cfs_quota_us, e.g. at \
             /sys/fs/cgroup/cpu",
        )
    })?;
    for f in ["cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.stat"] {
        if !root.join(f).exists() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "the cgroup v1 cpu controller at {} has no {f} (a kernel without \
                     CONFIG_CFS_BANDWIDTH?)",
                    root.display()
                ),
            ));
        }
    }
    if !writable(&root) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the cgroup v1 cpu controller at {} cannot be written by this user (making a \
                 group there takes root)",
                root.display()
            ),
        ));
    }
    Ok(root)
}

/// Whether this process may make a directory in `dir` (`access(W_OK)`).
fn writable(dir: &Path) -> bool {
    rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).is_ok()
}

/// A group's `cpu.stat`: how many enforcement periods have passed while it had runnable
/// tasks, in how many of them it ran out of quota, and for how long its tasks were held.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuStat {
    /// `nr_periods`.
    pub nr_periods: u64,
    /// `nr_throttled`: periods in which the group used up its quota and was held.
    pub nr_throttled: u64,
    /// `throttled_time`, nanoseconds.
    pub throttled_ns: u64,
}

impl CpuStat {
    /// Reads the text of a `cpu.stat` file (`key value` lines; unknown keys are skipped).
    pub fn parse(text: &str) -> CpuStat {
        let mut s = CpuStat::default();
        for line in text.lines() {
            let mut f = line.split_whitespace();
            let (Some(k), Some(v)) = (f.next(), f.next().and_then(|v| v.parse::<u64>().ok()))
            else {
                continue;
            };
            match k {
                "nr_periods" => s.nr_periods = v,
                "nr_throttled" => s.nr_throttled = v,
                "throttled_time" => s.throttled_ns = v,
                _ => {}
            }
        }
        s
    }

    /// What happened between `earlier` and this reading.
    pub fn since(&self, earlier: &CpuStat) -> CpuStat {
        CpuStat {
            nr_periods: self.nr_periods.saturating_sub(earlier.nr_periods),
            nr_throttled: self.nr_throttled.saturating_sub(earlier.nr_throttled),
            throttled_ns: self.throttled_ns.saturating_sub(earlier.throttled_ns),
        }
    }
}

/// A cgroup v1 `cpu` group with a CFS quota, removed when dropped (its processes moved back
/// to the root group first).
#[derive(Debug)]
pub struct CpuGroup {
    root: PathBuf,
    path: PathBuf,
    quota_us: u64,
    period_us: u64,
    removed: bool,
}

impl CpuGroup {
    /// Makes the group `root/name` (a fresh one: an existing group of that name is an error)
    /// allowed `share` of one CPU (`0.25` = a quarter) in every period of `period_us`
    /// microseconds: `cpu.cfs_quota_us` = `share × period_us`. The kernel takes periods of
    /// 1 ms to 1 s and quotas of at least 1 ms.
    pub fn create(root: &Path, name: &str, share: f64, period_us: u64) -> io::Result<CpuGroup> {
        if !(share > 0.0 && share.is_finite()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a CPU share must be above 0, not {share}"),
            ));
        }
        if !(1_000..=1_000_000).contains(&period_us) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("a CFS period is 1000..=1000000 µs, not {period_us}"),
            ));
        }
        let quota_us = (share * period_us as f64).round() as u64;
        if quota_us < 1_000 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a share of {share} of a {period_us} µs period is a quota of {quota_us} µs: \
                     the kernel takes at least 1000 (use a longer period)"
                ),
            ));
        }
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a group name: {name:?}"),
            ));
        }
        let path = root.join(name);
        std::fs::create_dir(&path).map_err(|e| {
            io::Error::new(e.kind(), format!("making cgroup {}: {e}", path.display()))
        })?;
        let g = CpuGroup {
            root: root.to_path_buf(),
            path,
            quota_us,
            period_us,
            removed: false,
        };
        // The period first: a quota longer than the current period is refused by some
        // kernels' checks of the parent's bandwidth otherwise.
        g.write("cpu.cfs_period_us", &period_us.to_string())?;
        g.write("cpu.cfs_quota_us", &quota_us.to_string())?;
        let (q, p) = (
            g.read_u64("cpu.cfs_quota_us")?,
            g.read_u64("cpu.cfs_period_us")?,
        );
        if (q, p) != (quota_us, period_us) {
            return Err(io::Error::other(format!(
                "cgroup {}: wrote quota {quota_us} / period {period_us} µs, reads back {q} / {p}",
                g.path.display()
            )));
        }
        Ok(g)
    }

    /// The group's directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `cpu.cfs_quota_us` as set.
    pub fn quota_us(&self) -> u64 {
        self.quota_us
    }

    /// `cpu.cfs_period_us` as set.
    pub fn period_us(&self) -> u64 {
        self.period_us
    }

    /// The share of one CPU the group may use: quota ÷ period.
    pub fn share(&self) -> f64 {
        self.quota_us as f64 / self.period_us as f64
    }

    /// Moves process `pid`, every thread of it, into the group (`cgroup.procs`); the threads
    /// it starts later are born there.
    pub fn add(&self, pid: u32) -> io::Result<()> {
        self.write("cgroup.procs", &pid.to_string())?;
        if !self.pids()?.contains(&pid) {
            return Err(io::Error::other(format!(
                "process {pid} is not in cgroup {} after writing it to cgroup.procs",
                self.path.display()
            )));
        }
        Ok(())
    }

    /// The processes in the group now.
    pub fn pids(&self) -> io::Result<Vec<u32>> {
        let text = std::fs::read_to_string(self.path.join("cgroup.procs"))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// The group's `cpu.stat` now.
    pub fn stat(&self) -> io::Result<CpuStat> {
        Ok(CpuStat::parse(&std::fs::read_to_string(
            self.path.join("cpu.stat"),
        )?))
    }

    /// Removes the group now (see [`Drop`]), saying what went wrong if it could not.
    pub fn remove(mut self) -> io::Result<()> {
        self.removed = true;
        remove_group(&self.root, &self.path)
    }

    fn write(&self, file: &str, value: &str) -> io::Result<()> {
        let p = self.path.join(file);
        std::fs::write(&p, value).map_err(|e| {
            io::Error::new(e.kind(), format!("writing {value} to {}: {e}", p.display()))
        })
    }

    fn read_u64(&self, file: &str) -> io::Result<u64> {
        let p = self.path.join(file);
        let t = std::fs::read_to_string(&p)?;
        t.trim()
            .parse()
            .map_err(|_| io::Error::other(format!("{}: not a number: {:?}", p.display(), t.trim())))
    }
}

impl Drop for CpuGroup {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = remove_group(&self.root, &self.path) {
                tracing::warn!("{e}");
            }
        }
    }
}

/// Moves every process of the group at `path` to the root group at `root`, then removes the
/// group's directory (cgroupfs refuses to remove a group with tasks in it; a process that
/// exits meanwhile is simply gone).
fn remove_group(root: &Path, path: &Path) -> io::Result<()> {
    let mut last = None;
    // A few tries: a process may be forking while it is moved.
    for _ in 0..10 {
        if let Ok(text) = std::fs::read_to_string(path.join("cgroup.procs")) {
            for pid in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                // It may have exited since the read: nothing to move then.
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
        }
        match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let e = last.unwrap_or_else(|| io::Error::other("unknown"));
    Err(io::Error::new(
        e.kind(),
        format!("removing cgroup {}: {e}", path.display()),
    ))
}

/// Removes the groups under `root` named `PREFIX-PID-…` whose process `PID` is no longer
/// running (left by a run of that process that was killed before it could remove them), and
/// says how many it removed. Groups of running processes are left alone.
pub fn sweep_stale(root: &Path, prefix: &str) -> usize {
    let Ok(dir) = std::fs::read_dir(root) else {
        return 0;
    };
    let mut removed = 0;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_of(&name, prefix) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if remove_group(root, &entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The process id in a group name `PREFIX-PID-…`.
fn owner_of(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('-')?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_controller_is_found_among_the_mounts() {
        let mounts = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpuset cgroup rw,relatime,cpuset 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
        assert_eq!(
            cpu_v1_mount(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/cpu"))
        );
        let joined = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0\n";
        assert_eq!(
            cpu_v1_mount(joined),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        // cgroup v2 only, or v1 without the cpu controller: none.
        assert_eq!(
            cpu_v1_mount("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"),
            None
        );
        assert_eq!(
            cpu_v1_mount("cgroup /sys/fs/cgroup/cpuacct cgroup rw,cpuacct 0 0\n"),
            None
        );
        assert_eq!(
            cpu_v1_mount("cgroup /a\\040b cgroup rw,cpu 0 0\n"),
            Some(PathBuf::from("/a b"))
        );
    }

    #[test]
    fn cpu_stat_is_read_and_differenced() {
        let a =
            CpuStat::parse("nr_periods 120\nnr_throttled 30\nthrottled_time 900000\nnr_bursts 0\n");
        assert_eq!(
            a,
            CpuStat {
                nr_periods: 120,
                nr_throttled: 30,
                throttled_ns: 900_000
            }
        );
        let b = CpuStat::parse("nr_periods 170\nnr_throttled 45\nthrottled_time 1000000\n");
        assert_eq!(
            b.since(&a),
            CpuStat {
                nr_periods: 50,
                nr_throttled: 15,
                throttled_ns: 100_000
            }
        );
    }

    #[test]
    fn stale_group_names_name_their_owner() {
        assert_eq!(owner_of("cport-bench-123-zone0", "cport-bench"), Some(123));
        assert_eq!(owner_of("cport-bench-x-zone0", "cport-bench"), None);
        assert_eq!(owner_of("other-123-zone0", "cport-bench"), None);
    }

    #[test]
    fn shares_the_kernel_would_refuse_are_refused_before_anything_is_made() {
        let root = Path::new("/nonexistent-cgroup-root");
        for (share, period) in [
            (0.0, 100_000),
            (-1.0, 100_000),
            (0.25, 100),
            (0.001, 100_000),
        ] {
            let e = CpuGroup::create(root, "g", share, period).unwrap_err();
            assert_eq!(
                e.kind(),
                io::ErrorKind::InvalidInput,
                "{share} {period}: {e}"
            );
        }
        let e = CpuGroup::create(root, "../x", 0.5, 100_000).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    /// With the controller there and writable (root on a cgroup v1 machine), a real group:
    /// its quota reads back, a process spinning in it is held to its share and throttled,
    /// and dropping the group removes it.
    #[test]
    fn a_spinning_process_is_held_to_the_share() {
        let root = match cpu_v1_root() {
            Ok(r) => r,
            Err(e) => {
                eprintln!("skipped: {e}");
                return;
            }
        };
        let name = format!("cport-bench-{}-unit", std::process::id());
        let g = CpuGroup::create(&root, &name, 0.2, 20_000).expect("make the group");
        assert_eq!((g.quota_us(), g.period_us()), (4_000, 20_000));
        let path = g.path().to_path_buf();
        let mut child = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("sh");
        g.add(child.id()).expect("move it in");
        let cpu0 = crate::proc::cpu_time(child.id()).unwrap();
        let s0 = g.stat().unwrap();
        let t0 = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let cpu = crate::proc::cpu_time(child.id()).unwrap() - cpu0;
        let wall = t0.elapsed();
        let s = g.stat().unwrap().since(&s0);
        let _ = child.kill();
        let _ = child.wait();
        let share = cpu.as_secs_f64() / wall.as_secs_f64();
        // /proc counts CPU in 4 ms ticks on this kernel: room for a few either way.
        assert!(share < 0.3, "a spinning process used {share:.2} of a CPU");
        assert!(s.nr_throttled > 0, "{s:?}");
        drop(g);
        assert!(!path.exists(), "{} is left", path.display());
    }
}
