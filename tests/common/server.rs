//! A real `chroma run` server for a test, on a private copy of a fixture,
//! on a free 127.0.0.1 port; stopped (by PID) when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ChromaServer {
    pub version: String,
    pub port: u16,
    pub dir: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `path` on 127.0.0.1:`port`: the status code, or None if nothing answers.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_millis(500),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

impl ChromaServer {
    /// Serves a copy of the fixture of `version` (its `chroma/` directory).
    pub fn start(version: &str) -> ChromaServer {
        Self::start_with(version, &super::fixture(version).join("chroma"), &[])
    }

    /// Serves a copy of `src` with extra environment (auth settings).
    pub fn start_with(version: &str, src: &Path, env: &[(&str, &str)]) -> ChromaServer {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("chroma");
        super::copy_dir(src, &dir);
        let mut server = ChromaServer {
            version: version.to_string(),
            port: free_port(),
            dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            _tmp: tmp,
        };
        server.spawn();
        server
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let chroma = super::venv(&self.version).join("bin/chroma");
        let log = std::fs::File::create(self._tmp.path().join("server.log")).unwrap();
        let child = Command::new(chroma)
            .args(["run", "--path"])
            .arg(&self.dir)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            // 0.x servers write `chroma.log` into their working directory.
            .current_dir(self._tmp.path())
            .env("ANONYMIZED_TELEMETRY", "False")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start `chroma run`");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        let v = if self.version.starts_with("0.4") {
            "v1"
        } else {
            "v2"
        };
        while Instant::now() < deadline {
            if http_status(self.port, &format!("/api/{v}/heartbeat")) == Some(200) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "chroma {} exited ({status}) before answering:\n{}",
                    self.version,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "chroma {} did not answer within 90 s:\n{}",
            self.version,
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._tmp.path().join("server.log")).unwrap_or_default()
    }

    /// Kills the server (SIGKILL, by PID) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for ChromaServer {
    fn drop(&mut self) {
        self.kill();
    }
}
