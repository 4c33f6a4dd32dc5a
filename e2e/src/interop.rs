//! The third-party SPIFFE tools the interop and federation tests run
//! (py-spiffe, spire-agent, spire-server, the go-spiffe mTLS workload),
//! installed by `e2e/tools/install-interop.sh` (`make test-setup`) in
//! `${SIGNET_TOOLS_DIR:-$HOME/.cache/signet-tools}`.

use std::path::PathBuf;

/// Where the install script puts the tools.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("SIGNET_TOOLS_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".cache/signet-tools"),
    }
}

/// The tool at `relative` under [`tools_dir`], or `None` when it is missing
/// (the caller skips, saying so). With `SIGNET_REQUIRE_INTEROP=1`, as CI
/// sets, a missing tool fails the test instead.
#[allow(clippy::print_stderr)] // the only way to say why a test skipped
pub fn tool(relative: &str) -> Option<PathBuf> {
    let path = tools_dir().join(relative);
    if path.is_file() {
        return Some(path);
    }
    let why = format!(
        "{} is missing: run e2e/tools/install-interop.sh (SIGNET_TOOLS_DIR={})",
        path.display(),
        tools_dir().display()
    );
    assert!(
        std::env::var("SIGNET_REQUIRE_INTEROP").as_deref() != Ok("1"),
        "SIGNET_REQUIRE_INTEROP=1 and {why}"
    );
    eprintln!("skipping: {why}");
    None
}

/// A go-spiffe mTLS server (`go-spiffe-mtls server`) on 127.0.0.1, taking
/// its SVID and bundles from a Workload API socket and admitting the given
/// client IDs. Killed when dropped.
pub struct GoMtlsServer {
    child: std::process::Child,
    /// The port it listens on.
    pub port: u16,
}

impl GoMtlsServer {
    /// Starts the server on `endpoint` (`unix:///...`); `None` when the
    /// tool is not installed (see [`tool`]).
    pub fn start(endpoint: &str, allowed_clients: &[&str]) -> Option<Self> {
        use std::io::{BufRead, BufReader};
        let binary = tool("bin/go-spiffe-mtls")?;
        let mut child = std::process::Command::new(binary)
            .args(["server", "-socket", endpoint, "-listen", "127.0.0.1:0"])
            .args(["-allow", &allowed_clients.join(",")])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting go-spiffe-mtls: {e}"));
        let server = |child| Self { child, port: 0 };
        let Some(stdout) = child.stdout.take() else {
            drop(server(child));
            panic!("go-spiffe-mtls server has no stdout");
        };
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let mut started = server(child);
        started.port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("go-spiffe-mtls server did not start: {line:?}"));
        Some(started)
    }
}

impl Drop for GoMtlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One go-spiffe mTLS connection from a workload on `endpoint` to
/// `server`, which must present `server_id`: Ok(the server's greeting) or
/// Err(what the client said).
pub fn go_mtls_once(
    endpoint: &str,
    server: &GoMtlsServer,
    server_id: &str,
) -> Result<String, String> {
    let binary = tool("bin/go-spiffe-mtls").ok_or("go-spiffe-mtls is not installed")?;
    let output = std::process::Command::new(binary)
        .args(["client", "-socket", endpoint])
        .args(["-connect", &format!("127.0.0.1:{}", server.port)])
        .args(["-server-id", server_id])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!("{text}{}", String::from_utf8_lossy(&output.stderr)))
    }
}

/// What a go-spiffe client saw while connecting over and over.
#[derive(Debug)]
pub struct Traffic {
    /// Connections attempted.
    pub connections: u64,
    /// Connections whose handshake or exchange failed.
    pub failed: u64,
    /// The first few failures.
    pub errors: Vec<String>,
    /// Distinct CAs (authority key IDs) that signed the server's SVIDs seen.
    pub server_issuers: usize,
    /// Distinct CAs that signed the client's own SVIDs while it connected.
    pub client_issuers: usize,
}

/// A go-spiffe client on `endpoint` opening a new mTLS connection to
/// the server on `port` every 100 ms until the server's or its own SVIDs
/// have been signed by `issuers` different CAs, or `timeout` passes; read
/// the outcome with [`traffic_summary`].
pub fn go_mtls_traffic(
    endpoint: &str,
    port: u16,
    server_id: &str,
    issuers: usize,
    timeout: std::time::Duration,
) -> std::process::Child {
    let binary =
        tool("bin/go-spiffe-mtls").unwrap_or_else(|| panic!("go-spiffe-mtls is not installed"));
    std::process::Command::new(binary)
        .args(["client", "-socket", endpoint])
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .args(["-server-id", server_id])
        .args(["-until-issuers", &issuers.to_string()])
        .args(["-timeout", &format!("{}s", timeout.as_secs())])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting go-spiffe-mtls: {e}"))
}

/// The summary a [`go_mtls_traffic`] client printed when it finished.
pub fn traffic_summary(child: std::process::Child) -> Traffic {
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for go-spiffe-mtls: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "go-spiffe-mtls printed no summary ({e}): {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let count = |key: &str| summary[key].as_u64().unwrap_or(0);
    let distinct = |key: &str| summary[key].as_array().map_or(0, Vec::len);
    Traffic {
        connections: count("connections"),
        failed: count("failed"),
        errors: summary["errors"]
            .as_array()
            .map(|e| {
                e.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        server_issuers: distinct("server_issuers"),
        client_issuers: distinct("client_issuers"),
    }
}
