//! Running the cloud and edge binaries for tests and benchmarks, and reading a process's
//! resource use.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// The cloud binary: `$CLOUD_BIN`, else beside the running executable.
pub fn cloud_bin() -> Result<PathBuf> {
    workspace_bin("cloud", "CLOUD_BIN")
}

/// The edge binary: `$EDGE_BIN`, else beside the running executable.
pub fn edge_bin() -> Result<PathBuf> {
    workspace_bin("edge", "EDGE_BIN")
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

/// Spawns `bin --config cfg` (stderr appended to `log`) and reads stdout until every
/// `listening <name> <addr>` line in `names` was printed; keeps draining stdout after.
fn spawn_listening(
    bin: &Path,
    cfg: &Path,
    log: &Path,
    names: &[&str],
) -> Result<(Child, HashMap<String, String>)> {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let mut addrs = HashMap::new();
    while !names.iter().all(|n| addrs.contains_key(*n)) {
        let Some(line) = lines.next() else {
            let _ = child.wait();
            bail!(
                "{} exited before listening (log: {})",
                bin.display(),
                log.display()
            )
        };
        if let Some((name, addr)) = line?
            .strip_prefix("listening ")
            .and_then(|l| l.split_once(' '))
        {
            addrs.insert(name.to_string(), addr.trim().to_string());
        }
    }
    // Keep draining stdout so the process never writes into a closed pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((child, addrs))
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
        Cloud::start_on(dir, "127.0.0.1:0", "", extra_yaml)
    }

    /// [`Cloud::start`] with the Kafka listener on `kafka_listen` (a peer that was told
    /// the address before the cloud ran, e.g. an edge whose uplink is "restored").
    pub fn start_at(dir: &Path, kafka_listen: &str, extra_yaml: &str) -> Result<Cloud> {
        Cloud::start_on(dir, kafka_listen, "", extra_yaml)
    }

    /// Like [`Cloud::start`] with the Kafka listener on `listen` and `kafka_yaml` (more
    /// keys of the `kafka:` section, each line indented by two spaces). Restarting on
    /// the same `dir` reuses the data directory; stderr is appended to `dir/cloud.log`.
    pub fn start_on(dir: &Path, listen: &str, kafka_yaml: &str, extra_yaml: &str) -> Result<Cloud> {
        let cfg = dir.join("cloud.yaml");
        let mqtt = if extra_yaml.contains("mqtt:") {
            ""
        } else {
            "mqtt:\n  listen: 127.0.0.1:0\n"
        };
        std::fs::write(
            &cfg,
            format!(
                "data_dir: {}\nkafka:\n  listen: {listen}\n{kafka_yaml}{mqtt}{extra_yaml}",
                dir.join("data").display()
            ),
        )?;
        let (child, mut addrs) = spawn_listening(
            &cloud_bin()?,
            &cfg,
            &dir.join("cloud.log"),
            &["kafka", "mqtt"],
        )?;
        Ok(Cloud {
            child,
            addr: addrs.remove("kafka").unwrap_or_default(),
            mqtt_addr: addrs.remove("mqtt").unwrap_or_default(),
        })
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
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

/// An edge process started from a YAML config (listeners on 127.0.0.1:0).
pub struct Edge {
    pub child: Child,
    /// The MQTT 3.1.1 listener.
    pub v4: SocketAddr,
    /// The MQTT 5 listener.
    pub v5: SocketAddr,
    /// The metrics endpoint.
    pub metrics: SocketAddr,
}

impl Edge {
    /// Writes `dir/edge.yaml` with `data_dir: dir/data`, every listener on 127.0.0.1:0 and
    /// `extra_yaml` appended (which must not repeat `data_dir`, `mqtt` or `metrics`), starts
    /// the edge and waits until it prints its listeners. Stderr goes to `dir/edge.log`
    /// (appended, so restarts on the same `dir` keep one log).
    pub fn start(dir: &Path, extra_yaml: &str) -> Result<Edge> {
        let cfg = dir.join("edge.yaml");
        std::fs::write(
            &cfg,
            format!(
                "data_dir: {}\nmqtt:\n  v4_listen: 127.0.0.1:0\n  v5_listen: 127.0.0.1:0\n\
                 metrics:\n  listen: 127.0.0.1:0\n{extra_yaml}",
                dir.join("data").display()
            ),
        )?;
        let (child, addrs) = spawn_listening(
            &edge_bin()?,
            &cfg,
            &dir.join("edge.log"),
            &["mqtt-v4", "mqtt-v5", "metrics"],
        )?;
        let addr = |n: &str| -> Result<SocketAddr> { Ok(addrs[n].parse()?) };
        Ok(Edge {
            v4: addr("mqtt-v4")?,
            v5: addr("mqtt-v5")?,
            metrics: addr("metrics")?,
            child,
        })
    }

    /// [`Edge::start`] for a benchmark: creates `dir`, sets `edge_id: bench` and the
    /// `cloud:` and `buffer:` section bodies (lines indented by two spaces).
    pub fn start_sections(dir: &Path, cloud_yaml: &str, buffer_yaml: &str) -> Result<Edge> {
        std::fs::create_dir_all(dir)?;
        Edge::start(
            dir,
            &format!("edge_id: bench\ncloud:\n{cloud_yaml}\nbuffer:\n{buffer_yaml}\n"),
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One sample of `GET /metrics`: metric name (with labels) to value.
    pub fn metrics(&self) -> Result<HashMap<String, f64>> {
        let mut s = std::net::TcpStream::connect(self.metrics)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        Ok(body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, v) = l.rsplit_once(' ')?;
                Some((name.to_string(), v.parse().ok()?))
            })
            .collect())
    }

    /// One metric, 0 when absent.
    pub fn metric(&self, name: &str) -> Result<f64> {
        Ok(self.metrics()?.get(name).copied().unwrap_or(0.0))
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kB` field of `/proc/<pid>/status`, in bytes.
fn status_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix(field).and_then(|v| v.strip_prefix(':')) {
            let kb: u64 = v.trim().trim_end_matches("kB").trim().parse()?;
            return Ok(kb * 1024);
        }
    }
    bail!("no {field} in /proc/{pid}/status")
}

/// Resident set size of a process in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmRSS")
}

/// Anonymous resident memory of a process in bytes (`RssAnon`: heap, stacks; the rest of
/// its RSS is mapped files, mostly its own code).
pub fn rss_anon_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "RssAnon")
}

/// Peak resident set size of a process in bytes (`VmHWM`: the high-water mark over its
/// whole life).
pub fn peak_rss_bytes(pid: u32) -> Result<u64> {
    status_bytes(pid, "VmHWM")
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

/// CPU seconds (user + system) of each thread of `pid` alive now, summed by thread name,
/// busiest first.
pub fn thread_cpu_secs(pid: u32) -> Result<Vec<(String, f64)>> {
    let mut by_name: Vec<(String, f64)> = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(stat) = std::fs::read_to_string(entry?.path().join("stat")) else {
            continue; // the thread ended meanwhile
        };
        let (Some((head, after)), Some(open)) = (stat.rsplit_once(')'), stat.find('(')) else {
            continue;
        };
        let name = &head[open + 1..];
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        match by_name.iter_mut().find(|(n, _)| n == name) {
            Some((_, s)) => *s += ticks as f64 / 100.0,
            None => by_name.push((name.to_string(), ticks as f64 / 100.0)),
        }
    }
    by_name.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(by_name)
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
