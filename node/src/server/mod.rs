//! gRPC services: `kv.v1.Kv` ([`kv::KvService`]), `kv.v1.Admin` ([`admin::AdminService`]),
//! plus health and reflection (peer traffic shares the port: see `transport`), wired in `lib.rs`.
//! Wire types are converted here, at the edge; errors become statuses in [`status`] only.

pub mod admin;
pub mod grpc;
pub mod kv;
pub mod status;

use std::time::Duration;

/// The deadline a gRPC client set (`grpc-timeout` header), if any.
///
/// The header is `<digits><unit>` with unit H, M, S, m (ms), u (µs) or n (ns); a malformed one
/// is ignored, as gRPC servers do.
pub fn grpc_timeout(md: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_header_parses_every_unit_and_ignores_garbage() {
        let mut md = tonic::metadata::MetadataMap::new();
        for (h, d) in [
            ("2S", Duration::from_secs(2)),
            ("150m", Duration::from_millis(150)),
            ("1H", Duration::from_secs(3600)),
            ("7u", Duration::from_micros(7)),
        ] {
            md.insert("grpc-timeout", h.parse().expect("ascii"));
            assert_eq!(grpc_timeout(&md), Some(d), "{h}");
        }
        for bad in ["", "S", "12x", "1234567890S"] {
            md.insert("grpc-timeout", bad.parse().expect("ascii"));
            assert_eq!(grpc_timeout(&md), None, "{bad}");
        }
    }
}
