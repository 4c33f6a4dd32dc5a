//! `signet-fuzz [--cases N] [TARGET...]`: runs the fuzz targets (all by
//! default) for N inputs each (default 1,000,000) and prints how many ran
//! and how long each took.

use std::process::ExitCode;

#[allow(clippy::print_stdout, clippy::print_stderr)]
fn main() -> ExitCode {
    let mut cases: u32 = 1_000_000;
    let mut names = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--cases" {
            match args.next().and_then(|n| n.replace('_', "").parse().ok()) {
                Some(n) => cases = n,
                None => {
                    eprintln!("--cases needs a number");
                    return ExitCode::from(2);
                }
            }
        } else if arg == "--list" {
            for target in signet_fuzz::TARGETS {
                println!("{:<14} {}", target.name, target.what);
            }
            return ExitCode::SUCCESS;
        } else {
            names.push(arg);
        }
    }
    let mut failed = false;
    for target in signet_fuzz::TARGETS {
        if !names.is_empty() && !names.iter().any(|n| n == target.name) {
            continue;
        }
        match signet_fuzz::run(target, cases) {
            Ok(report) => println!(
                "{:<14} {:>9} inputs ({:>9} accepted) in {:>7.1}s  ({})",
                report.name,
                report.cases,
                report.accepted,
                report.elapsed.as_secs_f64(),
                target.what
            ),
            Err(error) => {
                eprintln!("FAILED {error}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
