//! Pyroscope's ingest API (`POST /ingest`), as its Go SDK sends it: one request per profile,
//! the gzipped pprof in a multipart form field `profile` beside a `sample_type_config`, the
//! application name and series labels in `name` (`app{k=v,...}`), the interval in `from` and
//! `until` (Unix nanoseconds). No `format` parameter: Pyroscope reads `format=pprof` as a bare
//! pprof body and a multipart form only without it.
//!
//! Pyroscope turns a pprof's string labels into series labels: `comm` (process name), `phase`
//! and, with `--all`, `container_id` become series; the numeric `pid` and `tid` stay in the
//! profile. With a target, `pid` and `container_id` are labels of the name instead.

use bar_ebpf_common::Family;
use std::{
    collections::hash_map::RandomState,
    fmt::Write as _,
    hash::{BuildHasher as _, Hasher as _},
};

use super::{Endpoint, Identity, Interval, queue::Request};
use crate::export::{pprof, pprof_proto as pb};

/// The requests of one interval: one per family.
pub fn requests(interval: &Interval, id: &Identity, endpoint: &Endpoint) -> Vec<Request> {
    let name = series_name(id);
    interval
        .profiles
        .iter()
        .map(|(view, profile)| {
            let mut profile = profile.clone();
            if id.target.is_none() {
                label_containers(&mut profile, interval);
            }
            let mut gz = Vec::new();
            // Writing to memory cannot fail.
            let _ = pprof::write_gz(&profile, &mut gz);
            let rate = if *view == Family::Cpu && id.frequency > 0 {
                id.frequency
            } else {
                100
            };
            let query = [
                ("name", name.as_str()),
                ("from", &interval.start_ns.to_string()),
                ("until", &interval.end_ns.to_string()),
                ("spyName", "ebpfspy"),
                ("sampleRate", &rate.to_string()),
                ("aggregationType", "sum"),
            ]
            .iter()
            .map(|(k, v)| format!("{k}={}", encode_query(v)))
            .collect::<Vec<_>>()
            .join("&");
            let (content_type, body) = multipart(&[
                ("profile", "profile.pprof", &gz),
                (
                    "sample_type_config",
                    "sample_type_config.json",
                    sample_type_config(*view, &profile).as_bytes(),
                ),
            ]);
            Request {
                url: format!("{}/ingest?{query}", endpoint.url),
                content_type,
                content_encoding: None,
                body,
                what: format!("{} profile", view.name()),
            }
        })
        .collect()
}

/// `app{label=value,...}` with the labels of every series of this recording, sorted.
pub fn series_name(id: &Identity) -> String {
    let mut labels = vec![
        ("bar_version", id.version.clone()),
        ("hostname", id.hostname.clone()),
    ];
    if let Some((pid, info)) = &id.target {
        labels.push(("pid", pid.to_string()));
        if let Some(c) = &info.container {
            labels.push(("container_id", c.clone()));
        }
    }
    labels.sort();
    let inner: Vec<String> = labels
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", label_value(v)))
        .collect();
    format!("{}{{{}}}", id.app_name, inner.join(","))
}

/// A label value as the name's syntax allows: no `,` `{` `}` `=` or spaces.
fn label_value(v: &str) -> String {
    v.chars()
        .map(|c| {
            if matches!(c, ',' | '{' | '}' | '=') || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Adds a `container_id` string label to the samples of processes that run in a container.
fn label_containers(profile: &mut pb::Profile, interval: &Interval) {
    let Some(pid_key) = profile.string_table.iter().position(|s| s == "pid") else {
        return;
    };
    let mut key = None;
    for i in 0..profile.sample.len() {
        let pid = profile.sample[i]
            .label
            .iter()
            .find(|l| l.key == pid_key as i64)
            .map(|l| l.num);
        let container = pid
            .and_then(|p| u32::try_from(p).ok())
            .and_then(|p| interval.processes.get(&p))
            .and_then(|info| info.container.clone());
        let Some(container) = container else { continue };
        let k = *key.get_or_insert_with(|| intern(profile, "container_id"));
        let v = intern(profile, &container);
        profile.sample[i].label.push(pb::Label {
            key: k,
            str: v,
            ..Default::default()
        });
    }
}

fn intern(profile: &mut pb::Profile, s: &str) -> i64 {
    match profile.string_table.iter().position(|x| x == s) {
        Some(i) => i as i64,
        None => {
            profile.string_table.push(s.to_owned());
            profile.string_table.len() as i64 - 1
        }
    }
}

/// Pyroscope names a profile (its `__name__`) after its sample types: one whose (display)
/// name holds "cpu" is `process_cpu`, else the last type's display name. Every type of a
/// family gets the family's name, so that faults, tcp and numa profiles are named after
/// them; cpu and offcpu both land in `process_cpu`, told apart by their sample types.
fn sample_type_config(view: Family, profile: &pb::Profile) -> String {
    let mut json = serde_json::Map::new();
    for st in &profile.sample_type {
        let name = profile
            .string_table
            .get(st.r#type as usize)
            .cloned()
            .unwrap_or_default();
        json.insert(
            name,
            serde_json::json!({
                "display-name": view.name(),
                "aggregation": "sum",
                "sampled": view == Family::Cpu,
            }),
        );
    }
    serde_json::Value::Object(json).to_string()
}

/// A `multipart/form-data` body of file fields, with a random boundary that none of them
/// contains.
fn multipart(parts: &[(&str, &str, &[u8])]) -> (String, Vec<u8>) {
    let random = || RandomState::new().build_hasher().finish();
    let boundary = loop {
        let b = format!("bar-boundary-{:016x}{:016x}", random(), random());
        if !parts
            .iter()
            .any(|(_, _, data)| data.windows(b.len()).any(|w| w == b.as_bytes()))
        {
            break b;
        }
    };
    let mut body = Vec::new();
    for (field, file, data) in parts {
        let mut head = String::new();
        let _ = write!(
            head,
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        );
        body.extend_from_slice(head.as_bytes());
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Percent-encoding of a query value (unreserved characters kept).
fn encode_query(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::ProcessInfo;

    fn identity(target: Option<(u32, ProcessInfo)>) -> Identity {
        Identity {
            app_name: "web".into(),
            hostname: "host 1".into(),
            version: "0.1.0".into(),
            target,
            frequency: 99,
        }
    }

    #[test]
    fn name_carries_the_series_labels() {
        assert_eq!(
            series_name(&identity(None)),
            "web{bar_version=0.1.0,hostname=host_1}"
        );
        let info = ProcessInfo {
            exe: "web".into(),
            container: Some("abc".into()),
        };
        assert_eq!(
            series_name(&identity(Some((42, info)))),
            "web{bar_version=0.1.0,container_id=abc,hostname=host_1,pid=42}"
        );
    }

    #[test]
    fn multipart_body_has_both_fields() {
        let (ct, body) = multipart(&[("profile", "p", b"\x1f\x8bDATA"), ("x", "x.json", b"{}")]);
        let boundary = ct.strip_prefix("multipart/form-data; boundary=").unwrap();
        let text = String::from_utf8_lossy(&body);
        assert_eq!(text.matches(&format!("--{boundary}\r\n")).count(), 2);
        assert!(text.ends_with(&format!("--{boundary}--\r\n")));
        assert!(text.contains("name=\"profile\"; filename=\"p\"\r\nContent-Type: application/octet-stream\r\n\r\n\u{1f}"));
        assert_eq!(encode_query("a{b=c,d}"), "a%7Bb%3Dc%2Cd%7D");
    }

    #[test]
    fn sample_types_are_named_after_the_family() {
        let mut p = pb::Profile {
            string_table: vec![
                "".into(),
                "connects".into(),
                "count".into(),
                "latency".into(),
            ],
            ..Default::default()
        };
        p.sample_type = vec![
            pb::ValueType { r#type: 1, unit: 2 },
            pb::ValueType { r#type: 3, unit: 2 },
        ];
        let v: serde_json::Value =
            serde_json::from_str(&sample_type_config(Family::Tcp, &p)).unwrap();
        assert_eq!(v["connects"]["display-name"], "tcp");
        assert_eq!(v["latency"]["sampled"], false);
    }
}
