//! Running the edge binary for benchmarks and reading its Prometheus metrics.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context, Result};

/// The edge binary: `$EDGE_BIN`, else beside the running executable.
pub fn edge_bin() -> Result<PathBuf> {
    crate::proc::workspace_bin("edge", "EDGE_BIN")
}

/// One edge process; dropping it kills the process.
pub struct Edge {
    pub child: Child,
    /// The MQTT 3.1.1 listener.
    pub mqtt_addr: String,
    /// The metrics listener.
    pub metrics_addr: String,
}

impl Edge {
    /// Starts the edge with its listeners on 127.0.0.1:0, data in `dir`, and the YAML
    /// sections `cloud_yaml` and `buffer_yaml` (bodies, indented by two spaces).
    pub fn start(dir: &Path, cloud_yaml: &str, buffer_yaml: &str) -> Result<Edge> {
        std::fs::create_dir_all(dir)?;
        let cfg = dir.join("edge.yaml");
        std::fs::write(
            &cfg,
            format!(
                "edge_id: bench\ndata_dir: {}\nmqtt:\n  v4_listen: 127.0.0.1:0\n  v5_listen: null\n\
                 metrics:\n  listen: 127.0.0.1:0\ncloud:\n{cloud_yaml}\nbuffer:\n{buffer_yaml}\n",
                dir.join("data").display()
            ),
        )?;
        let mut child = Command::new(edge_bin()?)
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("edge.log"))?,
            ))
            .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut mqtt, mut metrics) = (None, None);
        while mqtt.is_none() || metrics.is_none() {
            let Some(line) = lines.next() else {
                bail!(
                    "edge exited before listening (see {})",
                    dir.join("edge.log").display()
                )
            };
            let line = line?;
            if let Some(a) = line.strip_prefix("listening mqtt-v4 ") {
                mqtt = Some(a.trim().to_string());
            } else if let Some(a) = line.strip_prefix("listening metrics ") {
                metrics = Some(a.trim().to_string());
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Ok(Edge {
            child,
            mqtt_addr: mqtt.unwrap_or_default(),
            metrics_addr: metrics.unwrap_or_default(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every sample of `GET /metrics`, by name with labels (`name{k="v"}`).
    pub fn metrics(&self) -> Result<HashMap<String, f64>> {
        let mut s = std::net::TcpStream::connect(&self.metrics_addr)?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: edge\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        let mut out = HashMap::new();
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            if let Some((k, v)) = line.rsplit_once(' ') {
                if let Ok(v) = v.parse() {
                    out.insert(k.to_owned(), v);
                }
            }
        }
        Ok(out)
    }

    /// One metric (0 when absent).
    pub fn metric(&self, name: &str) -> Result<f64> {
        Ok(self.metrics()?.get(name).copied().unwrap_or(0.0))
    }

    /// Kills the edge (what a power cut does; the benchmarks need no graceful stop).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
