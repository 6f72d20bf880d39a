//! `kvctl`: the quorumkv command-line client.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kv_node::client::{self, exit};
use kv_node::config::HumanDuration;
use kv_proto::kv::v1 as pb;
use kv_replica::Version;
use serde_json::json;

/// quorumkv client.
///
/// Exit codes:
///   0  success
///   1  get: key not found; cas: the compare did not match (nothing changed)
///   2  bad usage, or the node rejected the input (INVALID_ARGUMENT): nothing was done
///   3  definitely failed: no node reachable, or UNAVAILABLE / FAILED_PRECONDITION
///   4  outcome unknown: the operation may or may not have taken effect (deadline exceeded,
///      connection lost mid-call, internal error)
///
/// Versions are printed and given as EPOCH.COUNTER (leader-follower: term.index).
#[derive(Debug, Parser)]
#[command(name = "kvctl", version, verbatim_doc_comment)]
struct Args {
    /// Nodes to contact, tried in order: HOST:PORT[,HOST:PORT...].
    #[arg(
        long,
        env = "KV_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001",
        global = true
    )]
    endpoints: Vec<String>,
    /// Deadline of each call (also sent to the server as the gRPC deadline).
    #[arg(long, default_value = "2s", global = true)]
    timeout: HumanDuration,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Output::Text, global = true)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReadFromArg {
    Leader,
    Any,
    Local,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Write KEY=VALUE; prints the new version.
    Put {
        key: String,
        value: String,
        /// Replicas that must durably hold the write before it is acknowledged.
        #[arg(long)]
        w: Option<u32>,
    },
    /// Read KEY; prints the value. Exit 1 with "not found" on stderr if absent.
    Get {
        key: String,
        /// Replicas to read from (the newest answer wins).
        #[arg(long)]
        r: Option<u32>,
        /// leader (linearizable), any (may be stale), local (this node's copy, no coordination).
        #[arg(long, value_enum)]
        read_from: Option<ReadFromArg>,
    },
    /// Delete KEY (writes a tombstone); prints the tombstone's version.
    Delete {
        key: String,
        #[arg(long)]
        w: Option<u32>,
    },
    /// Write KEY=VALUE only if KEY's current version is EXPECTED_VERSION ("none": KEY must be
    /// absent). Prints the new version; exit 1 and the current version if it did not match.
    Cas {
        key: String,
        expected_version: String,
        value: String,
        #[arg(long)]
        w: Option<u32>,
    },
}

fn consistency(r: Option<u32>, w: Option<u32>, rf: Option<ReadFromArg>) -> Option<pb::Consistency> {
    Some(pb::Consistency {
        r: r.unwrap_or(0),
        w: w.unwrap_or(0),
        read_from: match rf {
            None => pb::ReadFrom::Unspecified,
            Some(ReadFromArg::Leader) => pb::ReadFrom::Leader,
            Some(ReadFromArg::Any) => pb::ReadFrom::Any,
            Some(ReadFromArg::Local) => pb::ReadFrom::Local,
        } as i32,
        on_quorum_loss: 0,
    })
}

fn version_text(v: &Option<pb::Version>) -> Option<String> {
    v.as_ref()
        .map(|v| Version::new(v.epoch, v.counter).to_string())
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// What a command printed and how it exits.
struct Done {
    stdout: String,
    stderr: Option<String>,
    code: u8,
}

async fn run(args: Args) -> Result<Done, tonic::Status> {
    let t = args.timeout.0;
    let (_, mut c) = client::connect_any(&args.endpoints, t).await?;
    let json = args.output == Output::Json;
    let ok = |stdout: String| Done {
        stdout,
        stderr: None,
        code: exit::OK,
    };
    Ok(match args.cmd {
        Cmd::Put { key, value, w } => {
            let r = c
                .put(request(
                    pb::PutRequest {
                        key: key.clone().into(),
                        value: value.into(),
                        consistency: consistency(None, w, None),
                    },
                    t,
                ))
                .await?
                .into_inner();
            let m = r.meta.unwrap_or_default();
            let v = version_text(&r.version);
            ok(if json {
                json!({"key": key, "version": v, "node": m.coordinator,
                       "acks": m.achieved.map_or(0, |a| a.w), "degraded": m.degraded})
                .to_string()
            } else {
                v.unwrap_or_default()
            })
        }
        Cmd::Get { key, r, read_from } => {
            let resp = c
                .get(request(
                    pb::GetRequest {
                        key: key.clone().into(),
                        consistency: consistency(r, None, read_from),
                    },
                    t,
                ))
                .await?
                .into_inner();
            let m = resp.meta.unwrap_or_default();
            let stdout = if json {
                json!({"key": key, "value": resp.found.then(|| text(&resp.value)),
                       "version": version_text(&resp.version), "node": m.coordinator,
                       "stale": m.stale, "lag": m.lag_entries, "degraded": m.degraded})
                .to_string()
            } else if resp.found {
                text(&resp.value)
            } else {
                String::new()
            };
            if resp.found {
                ok(stdout)
            } else {
                Done {
                    stdout,
                    stderr: Some("not found".into()),
                    code: exit::NOT_FOUND_OR_NOT_APPLIED,
                }
            }
        }
        Cmd::Delete { key, w } => {
            let r = c
                .delete(request(
                    pb::DeleteRequest {
                        key: key.clone().into(),
                        consistency: consistency(None, w, None),
                    },
                    t,
                ))
                .await?
                .into_inner();
            let m = r.meta.unwrap_or_default();
            let v = version_text(&r.version);
            ok(if json {
                json!({"key": key, "version": v, "node": m.coordinator,
                       "acks": m.achieved.map_or(0, |a| a.w), "degraded": m.degraded})
                .to_string()
            } else {
                v.unwrap_or_default()
            })
        }
        Cmd::Cas {
            key,
            expected_version,
            value,
            w,
        } => {
            let expected = match expected_version.as_str() {
                "none" | "-" => None,
                s => match s.parse::<Version>() {
                    Ok(v) => Some(pb::Version {
                        epoch: v.epoch,
                        counter: v.counter,
                    }),
                    Err(e) => {
                        return Err(tonic::Status::invalid_argument(format!(
                            "{e} (or none: the key must be absent)"
                        )));
                    }
                },
            };
            let r = c
                .compare_and_set(request(
                    pb::CompareAndSetRequest {
                        key: key.clone().into(),
                        expected,
                        value: value.into(),
                        consistency: consistency(None, w, None),
                    },
                    t,
                ))
                .await?
                .into_inner();
            let m = r.meta.unwrap_or_default();
            let v = version_text(&r.version);
            let stdout = if json {
                json!({"key": key, "applied": r.applied, "version": v, "node": m.coordinator,
                       "current_value": (!r.applied && r.found).then(|| text(&r.current_value)),
                       "acks": m.achieved.map_or(0, |a| a.w), "degraded": m.degraded})
                .to_string()
            } else if r.applied {
                v.clone().unwrap_or_default()
            } else {
                String::new()
            };
            if r.applied {
                ok(stdout)
            } else {
                Done {
                    stdout,
                    stderr: Some(match v {
                        Some(v) => format!("not applied: current version is {v}"),
                        None => "not applied: the key is absent (use none as the expected version)"
                            .into(),
                    }),
                    code: exit::NOT_FOUND_OR_NOT_APPLIED,
                }
            }
        }
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.output == Output::Json;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvctl: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    match rt.block_on(run(args)) {
        Ok(d) => {
            if !d.stdout.is_empty() {
                println!("{}", d.stdout);
            }
            if let Some(e) = d.stderr {
                eprintln!("{e}");
            }
            ExitCode::from(d.code)
        }
        Err(s) => {
            let code = client::exit_code(&s);
            let what = if client::may_have_happened(&s) {
                " (outcome unknown: it may have taken effect)"
            } else {
                ""
            };
            if json {
                println!(
                    "{}",
                    json!({"error": {"code": kv_node::metrics::code_name(s.code()), "message": s.message(),
                                     "may_have_happened": client::may_have_happened(&s)}})
                );
            }
            eprintln!(
                "kvctl: {}: {}{what}",
                kv_node::metrics::code_name(s.code()),
                s.message()
            );
            ExitCode::from(code)
        }
    }
}
