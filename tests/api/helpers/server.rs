//! The real `tollgate` binary as a child process.

use super::*;
use serde_json::Value;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A `tollgate serve` process.
pub struct Server {
    child: Child,
    pub base: String,
    /// Every line it has logged (JSON) since it listened.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts the binary on `db_url` with extra environment variables, once it listens.
    pub async fn start(db_url: &str, env: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        child
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("TOLLGATE_DATABASE_URL", db_url)
            .env("TOLLGATE_ADMIN_KEY", ADMIN_KEY)
            .env("TOLLGATE_MASTER_KEY", MASTER_KEY)
            .env("TOLLGATE__LOG__FORMAT", "json")
            .env("RUST_LOG", "info");
        for (k, v) in env {
            child.env(k, v);
        }
        let mut child = child
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start tollgate");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("log line") {
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if entry["fields"]["message"] == "tollgate listening" {
                    return entry["fields"]["addr"].as_str().expect("addr").to_owned();
                }
            }
            panic!("tollgate exited before listening");
        })
        .await
        .expect("tollgate listening in time");
        // Keep reading the log so the process never blocks on a full pipe.
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&log);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock().expect("log").push(line);
            }
        });
        Server {
            child,
            base: format!("http://{addr}"),
            log,
        }
    }

    /// SIGTERM, then waits for the process to exit: whether it exited successfully.
    pub async fn terminate(mut self) -> bool {
        let pid = self.child.id().expect("pid").to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill -TERM");
        assert!(sent.success(), "SIGTERM sent");
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("tollgate exits after SIGTERM")
            .expect("wait");
        status.success()
    }

    /// SIGKILL: no shutdown, no settlement of what is in flight.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("kill");
        let _ = self.child.wait().await;
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(ADMIN_KEY);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("admin request");
        assert_eq!(resp.status(), 200, "{path}");
        resp.json::<Value>().await.expect("json")["data"].clone()
    }
}
