//! An S3 endpoint on loopback for a test: `moto_server` (PyPI `moto[server]`,
//! from the `moto` venv of `scripts/setup-python.sh`) on a free 127.0.0.1
//! port, with one bucket made by `boto3`; stopped (by PID) when dropped.
//! Fixed region and dummy keys: the plans name them as `${VAR}`s, and
//! [`S3::env`] gives the values.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "lanceferry";
pub const REGION: &str = "us-east-1";
pub const KEY_ID: &str = "moto-test-key";
pub const SECRET: &str = "moto-test-secret";

pub struct S3 {
    pub port: u16,
    child: Child,
    _tmp: tempfile::TempDir,
}

impl S3 {
    pub fn start() -> S3 {
        let venv = super::venv_named("moto");
        let tmp = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(tmp.path().join("moto.log")).unwrap();
        let child = Command::new(venv.join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start moto_server");
        let s3 = S3 {
            port,
            child,
            _tmp: tmp,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while super::server::http_status(port, "/").is_none() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer within 60 s:\n{}",
                s3.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let o = s3
            .python(&format!(
                "import boto3\nboto3.client('s3', endpoint_url='{}', region_name='{REGION}').create_bucket(Bucket='{BUCKET}')\n",
                s3.endpoint()
            ))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "creating the bucket: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        s3
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._tmp.path().join("moto.log")).unwrap_or_default()
    }

    /// The environment the plans' `${AWS_...}` variables and boto3 read.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
            ("AWS_DEFAULT_REGION", REGION.into()),
        ]
    }

    /// A plan's `target:` block for `s3://BUCKET/<prefix>` on this endpoint.
    pub fn target_yaml(&self, prefix: &str) -> String {
        format!(
            "target:\n  lancedb:\n    uri: s3://{BUCKET}/{prefix}\n    storage_options:\n      aws_endpoint: {}\n      aws_region: {REGION}\n      allow_http: \"true\"\n      aws_access_key_id: ${{AWS_ACCESS_KEY_ID}}\n      aws_secret_access_key: ${{AWS_SECRET_ACCESS_KEY}}\n",
            self.endpoint()
        )
    }

    /// Python (`moto` venv, with boto3) with this endpoint's environment.
    pub fn python(&self, code: &str) -> Command {
        let mut c = Command::new(super::venv_named("moto").join("bin/python"));
        c.arg("-c").arg(code).envs(self.env());
        c
    }

    /// Object keys under `prefix` in the bucket.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let o = self
            .python(&format!(
                "import boto3\nc = boto3.client('s3', endpoint_url='{}', region_name='{REGION}')\nfor page in c.get_paginator('list_objects_v2').paginate(Bucket='{BUCKET}', Prefix='{prefix}'):\n    for o in page.get('Contents', []):\n        print(o['Key'])\n",
                self.endpoint()
            ))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
