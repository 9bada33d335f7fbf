//! moto's S3 server on 127.0.0.1, for the one off-site feature Garage lacks: object lock. A mock
//! (`scripts/setup-python-tools` installs it), so it serves only the object-lock test; every other
//! off-site test runs against a real Garage. A missing install is a panic, never a skip.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct MotoServer {
    child: Child,
    port: u16,
}

/// The tools virtualenv's bin directory (also holds the Prometheus parser the tests use).
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("MAILPACK_MOTO") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME").expect("HOME is set");
            PathBuf::from(home).join(".cache/mailpack-tools/py/bin")
        }
    }
}

impl MotoServer {
    /// Starts moto on a free port and creates `buckets`: (name, with object lock).
    pub fn start(buckets: &[(&str, bool)]) -> MotoServer {
        let dir = bin_dir();
        let server = dir.join("moto_server");
        assert!(
            server.is_file(),
            "no moto at {}: run scripts/setup-python-tools (or set MAILPACK_MOTO to its bin directory)",
            dir.display()
        );
        let port = {
            // Bound and released at once: moto binds it a moment later.
            let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
            l.local_addr().unwrap().port()
        };
        let child = Command::new(&server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = MotoServer { child, port };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "moto did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut script = String::from("import boto3\ns3 = boto3.client('s3', endpoint_url=");
        script.push_str(&format!(
            "'{}', aws_access_key_id='a', aws_secret_access_key='b', region_name='us-east-1')\n",
            moto.endpoint()
        ));
        for (name, locked) in buckets {
            script.push_str(&format!(
                "s3.create_bucket(Bucket='{name}', ObjectLockEnabledForBucket={})\n",
                if *locked { "True" } else { "False" }
            ));
        }
        moto.python(&script);
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "a".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "b".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", self.endpoint()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Runs a Python script with boto3 against this server (`s3` is not predefined); returns
    /// its stdout.
    pub fn python(&self, script: &str) -> String {
        let o = Command::new(bin_dir().join("python"))
            .args(["-c", script])
            .output()
            .expect("run the virtualenv's python");
        assert!(
            o.status.success(),
            "python failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// key -> (lock mode, retain-until as Unix seconds) of every object in `bucket`.
    pub fn locks(&self, bucket: &str) -> Vec<(String, Option<String>, Option<i64>)> {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='a', \
             aws_secret_access_key='b', region_name='us-east-1')\n\
             for o in s3.list_objects_v2(Bucket='{bucket}').get('Contents', []):\n\
             \x20   h = s3.head_object(Bucket='{bucket}', Key=o['Key'])\n\
             \x20   u = h.get('ObjectLockRetainUntilDate')\n\
             \x20   print(o['Key'], h.get('ObjectLockMode'), int(u.timestamp()) if u else None)\n",
            self.endpoint()
        );
        self.python(&script)
            .lines()
            .map(|l| {
                let mut f = l.split(' ');
                let key = f.next().unwrap().to_string();
                let mode = f.next().filter(|m| *m != "None").map(str::to_string);
                let until = f.next().and_then(|u| u.parse().ok());
                (key, mode, until)
            })
            .collect()
    }

    /// Tries to delete the current version of `key` for good; whether the store allowed it.
    pub fn delete_version(&self, bucket: &str, key: &str) -> bool {
        let script = format!(
            "import boto3\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='a', \
             aws_secret_access_key='b', region_name='us-east-1')\n\
             v = s3.head_object(Bucket='{bucket}', Key='{key}')['VersionId']\n\
             try:\n\
             \x20   s3.delete_object(Bucket='{bucket}', Key='{key}', VersionId=v)\n\
             \x20   print('deleted')\n\
             except Exception as e:\n\
             \x20   print('refused')\n",
            self.endpoint()
        );
        self.python(&script).trim() == "deleted"
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
