//! `signet-probe`: a static network probe for e2e test pods (no shell, no
//! libc resolver configuration beyond what the image has).
//!
//! ```text
//! signet-probe dns NAME [PORT]     resolve NAME (std resolver), print addresses
//! signet-probe tcp HOST:PORT       connect, print the first line received
//! signet-probe serve [ADDR]        accept connections on ADDR (default 0.0.0.0:8080)
//!                                  and answer each with "signet-probe <hostname>\n"
//! signet-probe sleep               sleep until killed
//! signet-probe cat PATH [TIMES SECS]
//!                                  print the file TIMES times (default 1),
//!                                  SECS seconds apart, each copy between
//!                                  "--- PATH" and "--- end" lines
//! ```
//! Exit status 0 on success, 1 on failure, 2 on usage errors.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(5);

fn out(msg: &str) {
    let _ = writeln!(std::io::stdout(), "{msg}");
}

fn err(msg: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "signet-probe: {msg}");
    ExitCode::FAILURE
}

fn dns(name: &str, port: u16) -> ExitCode {
    match (name, port).to_socket_addrs() {
        Ok(addrs) => {
            let addrs: Vec<_> = addrs.map(|a| a.ip().to_string()).collect();
            if addrs.is_empty() {
                return err(&format!("{name}: no addresses"));
            }
            out(&format!("{name} {}", addrs.join(" ")));
            ExitCode::SUCCESS
        }
        Err(e) => err(&format!("resolve {name}: {e}")),
    }
}

fn tcp(target: &str) -> ExitCode {
    let addrs = match target.to_socket_addrs() {
        Ok(a) => a.collect::<Vec<_>>(),
        Err(e) => return err(&format!("resolve {target}: {e}")),
    };
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, TIMEOUT) {
            Ok(stream) => {
                let _ = stream.set_read_timeout(Some(TIMEOUT));
                let mut line = String::new();
                let _ = BufReader::new(stream).read_line(&mut line);
                out(&format!("connected {addr} {}", line.trim_end()));
                return ExitCode::SUCCESS;
            }
            Err(e) => last = Some(format!("connect {addr}: {e}")),
        }
    }
    err(&last.unwrap_or_else(|| format!("{target}: no addresses")))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn serve(addr: &str) -> ExitCode {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => return err(&format!("bind {addr}: {e}")),
    };
    out(&format!("listening on {addr}"));
    let greeting = format!("signet-probe {}\n", hostname());
    for mut s in listener.incoming().flatten() {
        let _ = s.set_write_timeout(Some(TIMEOUT));
        let _ = s.write_all(greeting.as_bytes());
    }
    ExitCode::SUCCESS
}

/// Prints a file repeatedly, for tests that watch files being replaced.
fn cat(path: &str, times: u32, pause: Duration) -> ExitCode {
    for round in 0..times {
        if round > 0 {
            std::thread::sleep(pause);
        }
        match std::fs::read_to_string(path) {
            Ok(text) => out(&format!("--- {path}\n{}\n--- end", text.trim_end())),
            Err(e) => return err(&format!("read {path}: {e}")),
        }
    }
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["dns", name] => dns(name, 0),
        ["dns", name, port] => match port.parse() {
            Ok(p) => dns(name, p),
            Err(_) => err("bad port"),
        },
        ["tcp", target] => tcp(target),
        ["serve"] => serve("0.0.0.0:8080"),
        ["serve", addr] => serve(addr),
        ["cat", path] => cat(path, 1, Duration::ZERO),
        ["cat", path, times, secs] => match (times.parse(), secs.parse()) {
            (Ok(times), Ok(secs)) => cat(path, times, Duration::from_secs(secs)),
            _ => err("bad TIMES or SECS"),
        },
        ["sleep"] => loop {
            std::thread::sleep(Duration::from_secs(3600));
        },
        _ => {
            let _ = writeln!(
                std::io::stderr(),
                "usage: signet-probe dns NAME [PORT] | tcp HOST:PORT | serve [ADDR] | cat PATH [TIMES SECS] | sleep"
            );
            ExitCode::from(2)
        }
    }
}
