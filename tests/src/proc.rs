//! Running the cloud binary for benchmarks, and reading a process's resource use.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// The cloud binary: `$CLOUD_BIN`, else beside the running executable.
pub fn cloud_bin() -> Result<PathBuf> {
    workspace_bin("cloud", "CLOUD_BIN")
}

/// A workspace binary: `$<env>`, else `name` beside the running executable.
pub fn workspace_bin(name: &str, env: &str) -> Result<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("exe dir")?;
    for cand in [dir.join(name), dir.join("..").join(name)] {
        if cand.exists() {
            return Ok(cand);
        }
    }
    bail!("{name} binary not found; build it (cargo build --workspace --all-targets) or set {env}")
}

pub struct Cloud {
    pub child: Child,
    /// The Kafka listener.
    pub addr: String,
    /// The MQTT listener.
    pub mqtt_addr: String,
}

impl Cloud {
    /// Starts the cloud with every listener on 127.0.0.1:0 and `extra_yaml` appended to
    /// its config in `dir` (an `mqtt:` section there replaces the default one, and must
    /// keep a plain listener). Waits until both listeners are announced.
    pub fn start(dir: &Path, extra_yaml: &str) -> Result<Cloud> {
        Cloud::start_at(dir, "127.0.0.1:0", extra_yaml)
    }

    /// [`Cloud::start`] with the Kafka listener on `kafka_listen` (a peer that was told
    /// the address before the cloud ran, e.g. an edge whose uplink is "restored").
    pub fn start_at(dir: &Path, kafka_listen: &str, extra_yaml: &str) -> Result<Cloud> {
        let cfg = dir.join("cloud.yaml");
        let mqtt = if extra_yaml.contains("mqtt:") {
            ""
        } else {
            "mqtt:\n  listen: 127.0.0.1:0\n"
        };
        std::fs::write(
            &cfg,
            format!(
                "data_dir: {}\nkafka:\n  listen: {kafka_listen}\n{mqtt}{extra_yaml}",
                dir.join("data").display()
            ),
        )?;
        let mut child = Command::new(cloud_bin()?)
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(dir.join("cloud.log"))?))
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut addr, mut mqtt_addr) = (None, None);
        while addr.is_none() || mqtt_addr.is_none() {
            let Some(line) = lines.next() else {
                bail!("cloud exited before listening")
            };
            let line = line?;
            if let Some(a) = line.strip_prefix("listening kafka ") {
                addr = Some(a.trim().to_string());
            } else if let Some(a) = line.strip_prefix("listening mqtt ") {
                mqtt_addr = Some(a.trim().to_string());
            }
        }
        // Keep draining stdout so the broker never writes into a closed pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Cloud {
            child,
            addr: addr.unwrap_or_default(),
            mqtt_addr: mqtt_addr.unwrap_or_default(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident set size of a process in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            let kb: u64 = v.trim().trim_end_matches("kB").trim().parse()?;
            return Ok(kb * 1024);
        }
    }
    bail!("no VmRSS")
}

/// Peak resident set size of a process in bytes (`VmHWM`: the high-water mark over its
/// whole life).
pub fn peak_rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("VmHWM:") {
            let kb: u64 = v.trim().trim_end_matches("kB").trim().parse()?;
            return Ok(kb * 1024);
        }
    }
    bail!("no VmHWM")
}

/// User plus system CPU seconds a process has used so far.
pub fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).context("utime")?.parse::<u64>()? + f.get(12).context("stime")?.parse::<u64>()?;
    Ok(ticks as f64 / 100.0) // USER_HZ is 100 on Linux (x86, ARM)
}

/// Bytes of every file under `dir` (0 if it does not exist).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Open file descriptors of a process.
pub fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// The p-th percentile (0..=100) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
