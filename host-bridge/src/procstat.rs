//! The node process's own CPU, memory, threads and file descriptors, read
//! from `/proc/self` at scrape time (the standard `process_*` metrics).

/// What a scrape reports about the process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub threads: u64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
}

/// Reads `/proc/self`; `None` where there is no procfs.
pub fn read() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let boot = std::fs::read_to_string("/proc/stat").ok()?;
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let fields = parse_stat(&stat)?;
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Some(ProcessStats {
        cpu_seconds: (fields.utime + fields.stime) as f64 / ticks,
        resident_bytes: fields.rss_pages * page.max(0) as u64,
        virtual_bytes: fields.vsize,
        threads: fields.threads,
        start_time_seconds: boot_time(&boot)? as f64 + fields.starttime as f64 / ticks,
        open_fds,
        max_fds: max_open_files(&limits)?,
    })
}

/// The fields of `/proc/self/stat` the metrics need.
#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    threads: u64,
    starttime: u64,
    vsize: u64,
    rss_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may hold spaces, so fields are counted after its closing `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // After ")" come fields 3.. (state is field 3).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        threads: field(20)?,
        starttime: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

/// `btime` of `/proc/stat`: boot time, seconds since the epoch.
fn boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit of "Max open files" in `/proc/self/limits`.
fn max_open_files(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let text = "4242 (chorus (x) y) S 1 2 3 4 5 6 7 8 9 10 111 222 13 14 15 16 7 18 \
                    9000 123456789 300 rest of line";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                utime: 111,
                stime: 222,
                threads: 7,
                starttime: 9000,
                vsize: 123_456_789,
                rss_pages: 300,
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn limits_and_boot_time_are_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            20000                20000                files\n";
        assert_eq!(max_open_files(limits), Some(20_000));
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn this_process_reads_itself() {
        let p = read().expect("procfs on Linux");
        assert!(
            p.resident_bytes > 0 && p.threads >= 1 && p.open_fds >= 1,
            "{p:?}"
        );
        assert!(p.max_fds >= p.open_fds, "{p:?}");
    }
}
