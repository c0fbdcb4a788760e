//! CPU time and memory of another process, read from Linux `/proc/<pid>/stat` and `/proc/<pid>/status`.
//!
//! Used by `loadgen --watch-pid` to charge the gateway's CPU to the requests of the measured window
//! and to report its peak resident set (VmHWM).

use anyhow::{bail, Context, Result};

/// `utime + stime` of `pid`, in clock ticks (see `getconf CLK_TCK`, 100 on Linux/x86-64).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu_ticks(&stat).with_context(|| format!("parsing {path}"))
}

/// Parses `utime + stime` (fields 14 and 15) out of a `/proc/<pid>/stat` line. The command name
/// (field 2) is in parentheses and may hold spaces, so fields are counted after the last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Result<u64> {
    let Some(close) = stat.rfind(')') else {
        bail!("no ')' after the command name");
    };
    // After ")": field 3 (state) is index 0, so utime (14) is index 11 and stime (15) index 12.
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let (Some(utime), Some(stime)) = (fields.get(11), fields.get(12)) else {
        bail!("fewer than 15 fields");
    };
    Ok(utime.parse::<u64>().context("utime")? + stime.parse::<u64>().context("stime")?)
}

/// Memory figures of `pid` in KiB: `(VmHWM, VmRSS)`, peak and current resident set size.
pub fn memory_kib(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_memory_kib(&status).with_context(|| format!("parsing {path}"))
}

/// Parses `VmHWM` and `VmRSS` (KiB) out of a `/proc/<pid>/status` text.
pub fn parse_memory_kib(status: &str) -> Result<(u64, u64)> {
    let field = |name: &str| -> Result<u64> {
        let line = status.lines().find(|l| l.starts_with(name)).with_context(|| format!("no {name} line"))?;
        let value = line[name.len()..].split_whitespace().next().with_context(|| format!("empty {name} line"))?;
        value.parse::<u64>().with_context(|| format!("{name} value"))
    };
    Ok((field("VmHWM:")?, field("VmRSS:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (quota serve) S 1 4242 4242 0 -1 4194560 1000 0 0 0 150 37 0 0 20 0 2 0";
        assert_eq!(parse_cpu_ticks(stat).expect("parses"), 187);
    }

    #[test]
    fn short_stat_is_an_error() {
        assert!(parse_cpu_ticks("1 (x) S 1 2").is_err());
        assert!(parse_cpu_ticks("garbage").is_err());
    }

    #[test]
    fn status_memory_lines_are_read() {
        let status = "Name:\tquota\nVmPeak:\t  99999 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   18000 kB\n";
        assert_eq!(parse_memory_kib(status).expect("parses"), (20480, 18000));
    }

    #[test]
    fn own_process_is_readable() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_ok());
        let (hwm, rss) = memory_kib(pid).expect("own status");
        assert!(hwm >= rss && rss > 0);
    }
}
