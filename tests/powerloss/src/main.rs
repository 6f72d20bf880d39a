//! `kv-powerloss`: undoes what a killed process wrote and never synced (see the library's
//! documentation, `src/lib.rs`), so that its files are as a power failure would leave them.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The preload library writes journals with this module; this tool reads and undoes them.
#[allow(dead_code)]
mod journal;

#[derive(Parser)]
#[command(
    name = "kv-powerloss",
    about = "Power-loss emulation for crash tests",
    long_about = "Power-loss emulation for crash tests.\n\nRun a process with \
        LD_PRELOAD=<target dir>/libkv_powerloss.so, KV_POWERLOSS_DATA=<its data directory> and \
        KV_POWERLOSS_JOURNAL=<a directory outside it>: every write to a file under the data \
        directory is journalled until that file's next fsync. Kill the process with kill -9, \
        then run `kv-powerloss revert <journal directory>`: each file goes back to what its \
        last fsync left, as after a power failure in which nothing written since reached the \
        disk. Names (files created, renamed or removed without an fsync of their directory) \
        are not reverted."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Undo the unsynced writes of a process that is no longer running, and remove the
    /// journals. Prints one line per file changed. Refuses (exit 2) while the process runs.
    Revert {
        /// The process's KV_POWERLOSS_JOURNAL directory.
        journal_dir: PathBuf,
    },
}

/// Whether process `pid` exists and has not exited (a zombie, not yet reaped, has).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|st| {
        // `pid (comm) S ...`: the state follows the last ')'.
        st.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

fn main() -> ExitCode {
    let Cmd::Revert { journal_dir } = Cli::parse().cmd;
    let entries = match std::fs::read_dir(&journal_dir) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("kv-powerloss: cannot read {}: {e}", journal_dir.display());
            return ExitCode::from(2);
        }
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(journal::SUFFIX))
        .collect();
    files.sort();
    // Journals are named `<pid>-<n>.undo`: undoing the writes of a process that still runs
    // would corrupt what it goes on writing.
    for f in &files {
        let pid = f
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && running(pid)
        {
            eprintln!(
                "kv-powerloss: process {pid}, whose writes {} journals, is still running: kill it first",
                f.display()
            );
            return ExitCode::from(2);
        }
    }
    let (mut changed, mut lost) = (0usize, 0u64);
    for f in files {
        let reverted = std::fs::read(&f)
            .and_then(|b| journal::parse(&b))
            .and_then(|j| journal::revert(&j));
        match reverted {
            Ok(Some(r)) if r.steps > 0 => {
                changed += 1;
                lost += r.size_before.saturating_sub(r.size_after) + r.restored;
                println!(
                    "{}: {} write(s) undone, size {} -> {}, {} byte(s) put back",
                    r.path.display(),
                    r.steps,
                    r.size_before,
                    r.size_after,
                    r.restored
                );
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("kv-powerloss: {}: {e}", f.display());
                return ExitCode::from(1);
            }
        }
        if let Err(e) = std::fs::remove_file(&f) {
            eprintln!("kv-powerloss: cannot remove {}: {e}", f.display());
            return ExitCode::from(1);
        }
    }
    println!(
        "{changed} file(s) reverted to their last fsync ({lost} byte(s) of unsynced writes lost)"
    );
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::running;

    #[test]
    fn a_running_process_is_told_from_one_that_is_gone() {
        assert!(running(std::process::id()));
        // Above the kernel's largest pid (4,194,304).
        assert!(!running(4_194_305));
        // A child that exited and was reaped.
        let mut c = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = c.id();
        c.wait().expect("wait");
        assert!(!running(pid));
    }
}
