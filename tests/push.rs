//! Pushing while recording: receivers on loopback take what `--pyroscope` and `--otlp` send
//! during a real recording of a workload of ours, and decode it with the project's pprof
//! decoder, `go tool pprof` and the official OTLP types. Every interval together must hold
//! exactly the samples of the capture's cpu.folded, with the workload's hot function on top
//! and the labels of the process. Backends that refuse, fail or never answer must leave the
//! recording on time and whole, with counters that say what happened.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use bar::export::{pprof, pprof_proto as pb};
use bar_tests::{
    Folded, Recording, Value, Workload, go,
    http::{Answer, Receiver, Request, refused_url},
    one_line_error, out_dir, pprof_or_skip, root_or_skip, run,
};
use opentelemetry_proto::tonic::{
    collector::profiles::v1development::ExportProfilesServiceRequest,
    common::v1::any_value::Value as Any, profiles::v1development as otlp,
};
use prost::Message as _;

const SECRET: &str = "s3cret";
/// The receivers are on loopback: no proxy of the environment in between.
const NO_PROXY: (&str, &str) = ("NO_PROXY", "127.0.0.1,localhost");

fn pprof_text(args: &[&str], file: &Path) -> String {
    let out = go()
        .args(["tool", "pprof"])
        .args(args)
        .arg(file)
        .output()
        .expect("run go tool pprof");
    assert!(
        out.status.success(),
        "go tool pprof {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Records `cpu --seconds 4` to its end with `push_args`; returns the recording, the workload's
/// pid and what the receiver got.
fn record_through(name: &str, push_args: &[&str], env: &[(&str, &str)]) -> (Recording, u32) {
    let dir = out_dir(name);
    let mut w = Workload::start(&["cpu", "--seconds", "4"]);
    let pid = w.pid();
    let pid_s = pid.to_string();
    let mut args = vec![
        "attach",
        "--pid",
        &pid_s,
        "--events",
        "cpu,offcpu",
        "--frequency",
        "199",
        "--push-every",
        "1s",
    ];
    args.extend_from_slice(push_args);
    let mut env = env.to_vec();
    env.push(NO_PROXY);
    let rec = Recording::start_with_env(&args, &dir, &env);
    w.go();
    w.finish();
    (rec.finish(), pid)
}

fn push_entry<'a>(summary: &'a Value, backend: &str) -> &'a Value {
    summary["push"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["backend"] == backend))
        .unwrap_or_else(|| panic!("no {backend} in push: {}", summary["push"]))
}

/// Self weight per leaf function of a folded file.
fn folded_leaves(folded: &Folded) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for (stack, w) in &folded.stacks {
        // The process name alone: a sample without a stack, `[no stack]` in pprof.
        let leaf = match stack.rsplit_once(';') {
            Some((_, leaf)) => leaf.to_owned(),
            None => "[no stack]".to_owned(),
        };
        *m.entry(leaf).or_default() += w;
    }
    m
}

/// No secret anywhere bar wrote or said.
fn assert_no_secret(rec: &Recording) {
    let capture = std::fs::read(rec.dir.join("capture.bar")).expect("capture");
    assert!(
        !capture
            .windows(SECRET.len())
            .any(|w| w == SECRET.as_bytes()),
        "the capture holds the secret"
    );
    let summary = std::fs::read_to_string(rec.dir.join("summary.json")).expect("summary");
    assert!(!summary.contains(SECRET), "summary.json holds the secret");
    assert!(summary.contains("REDACTED"), "the flag is shown redacted");
    assert!(
        !rec.stderr.iter().any(|l| l.contains(SECRET)),
        "stderr shows the secret: {:?}",
        rec.stderr
    );
}

fn profile_of(req: &Request) -> pb::Profile {
    let data = req.form_field("profile").expect("a profile field");
    pprof::read_gz(&data).expect("a pprof profile")
}

fn sample_types(p: &pb::Profile) -> Vec<String> {
    p.sample_type
        .iter()
        .map(|t| p.string_table[t.r#type as usize].clone())
        .collect()
}

#[test]
fn pyroscope_gets_every_interval_with_the_workload_and_its_labels() {
    let test = "pyroscope_gets_every_interval_with_the_workload_and_its_labels";
    if !root_or_skip(test) || !pprof_or_skip(test) {
        return;
    }
    let rx = Receiver::start(Answer::Status(200));
    let url = rx.url();
    let (rec, pid) = record_through(
        "push-pyroscope",
        &["--pyroscope", &url, "--push-basic-auth", "pushuser:s3cret"],
        &[("BAR_PUSH_TENANT", "team-a")],
    );
    let summary = rec.summary();
    let reqs = rx.requests();
    assert!(!reqs.is_empty(), "nothing reached the receiver");

    let name = format!(
        "bar-probe{{bar_version={},hostname={},pid={pid}}}",
        summary["bar_version"].as_str().unwrap(),
        summary["hostname"].as_str().unwrap()
    );
    let mut cpu: Vec<(i128, i128, pb::Profile)> = Vec::new();
    let mut offcpu = 0;
    for r in &reqs {
        assert_eq!((r.method.as_str(), r.path()), ("POST", "/ingest"));
        let q = r.query();
        assert_eq!(q["name"], name, "{q:?}");
        assert_eq!(q["spyName"], "ebpfspy");
        assert!(!q.contains_key("format"), "a multipart form has no format");
        let (from, until): (i128, i128) = (q["from"].parse().unwrap(), q["until"].parse().unwrap());
        assert!(from < until && from > 1_600_000_000_000_000_000, "{q:?}");
        assert_eq!(r.header("X-Scope-OrgID"), Some("team-a"));
        assert_eq!(
            r.header("Authorization"),
            Some("Basic cHVzaHVzZXI6czNjcmV0"),
            "basic auth from the flag"
        );
        let config: Value = serde_json::from_slice(&r.form_field("sample_type_config").unwrap())
            .expect("sample_type_config JSON");
        let p = profile_of(r);
        let types = sample_types(&p);
        if types.contains(&"cpu".to_owned()) {
            assert_eq!(q["sampleRate"], "199");
            assert_eq!(config["samples"]["display-name"], "cpu");
            assert_eq!(config["samples"]["sampled"], true);
            cpu.push((from, until, p));
        } else {
            assert_eq!(types, ["switches", "offcpu"]);
            assert_eq!(config["offcpu"]["display-name"], "offcpu");
            offcpu += 1;
        }
    }
    assert!(
        cpu.len() >= 3,
        "a 4 s workload pushed every 1 s: {} cpu",
        cpu.len()
    );
    assert!(offcpu >= 1, "off-CPU intervals too");
    // Intervals follow each other without gap or overlap.
    cpu.sort_by_key(|c| c.0);
    for pair in cpu.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "intervals overlap");
    }

    // Together, the intervals hold exactly the capture's samples, hot function first.
    let folded = rec.folded("cpu");
    let mut leaves: BTreeMap<String, i64> = BTreeMap::new();
    let mut total = 0;
    for (_, _, p) in &cpu {
        for s in &p.sample {
            let loc = &p.location[s.location_id[0] as usize - 1];
            let f = &p.function[loc.line[0].function_id as usize - 1];
            *leaves
                .entry(p.string_table[f.name as usize].clone())
                .or_default() += s.value[0];
            total += s.value[0];
        }
    }
    assert_eq!(total as u64, folded.total(), "pushed samples = cpu.folded");
    let want: BTreeMap<String, i64> = folded_leaves(&folded)
        .into_iter()
        .map(|(k, v)| (k, v as i64))
        .collect();
    assert_eq!(leaves, want, "same self weight per function");
    let top = leaves.iter().max_by_key(|(_, w)| **w).unwrap().0;
    assert!(top.contains("burn_cpu_hot_loop"), "{leaves:#?}");

    // go tool pprof reads the biggest interval as Pyroscope gets it.
    let biggest = cpu
        .iter()
        .max_by_key(|c| c.2.sample.iter().map(|s| s.value[0]).sum::<i64>())
        .unwrap();
    let file = rec.dir.join("pushed-cpu.pb.gz");
    let mut gz = Vec::new();
    pprof::write_gz(&biggest.2, &mut gz).unwrap();
    std::fs::write(&file, gz).unwrap();
    let top = pprof_text(&["-top", "-nodecount=3", "-sample_index=samples"], &file);
    assert!(top.contains("burn_cpu_hot_loop"), "{top}");
    let tags = pprof_text(&["-tags"], &file);
    assert!(
        tags.contains("bar-probe") && tags.contains(&pid.to_string()),
        "{tags}"
    );

    let p = push_entry(&summary, "pyroscope");
    let intervals = cpu.len() as u64;
    assert_eq!(p["sent"], intervals, "{p}");
    assert_eq!(
        (p["failed"].as_u64(), p["dropped"].as_u64()),
        (Some(0), Some(0)),
        "{p}"
    );
    assert_eq!(p["name"], "bar-probe");
    assert_eq!(p["url"], url.as_str());
    let html = std::fs::read_to_string(rec.dir.join("report.html")).unwrap();
    assert!(
        html.contains("id=\"push\"") && html.contains(&url),
        "report says where"
    );
    assert_no_secret(&rec);
}

/// A string of the OTLP dictionary.
fn text(d: &otlp::ProfilesDictionary, i: i32) -> &str {
    &d.string_table[i as usize]
}

#[test]
fn otlp_gets_every_interval_with_the_workload_and_its_resource() {
    let test = "otlp_gets_every_interval_with_the_workload_and_its_resource";
    if !root_or_skip(test) {
        return;
    }
    let rx = Receiver::start(Answer::Status(200));
    let url = rx.url();
    let (rec, pid) = record_through(
        "push-otlp",
        &["--otlp", &url],
        &[("BAR_PUSH_BEARER_TOKEN", "tok3n")],
    );
    let summary = rec.summary();
    let reqs = rx.requests();
    assert!(reqs.len() >= 3, "{} requests", reqs.len());
    let mut total = 0i64;
    let mut leaves: BTreeMap<String, i64> = BTreeMap::new();
    let mut threads = 0;
    for r in &reqs {
        assert_eq!(r.path(), "/v1development/profiles");
        assert_eq!(r.header("Content-Type"), Some("application/x-protobuf"));
        assert_eq!(r.header("Authorization"), Some("Bearer tok3n"));
        assert_eq!(r.header("Content-Encoding"), Some("gzip"));
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&r.body[..]), &mut raw)
            .expect("gzip body");
        let req = ExportProfilesServiceRequest::decode(&raw[..]).expect("OTLP request");
        let d = req.dictionary.as_ref().expect("a dictionary");
        assert_eq!(d.string_table[0], "", "zero elements first");
        assert_eq!(req.resource_profiles.len(), 1, "one process: the target");
        let rp = &req.resource_profiles[0];
        let attrs: BTreeMap<&str, String> = rp
            .resource
            .as_ref()
            .unwrap()
            .attributes
            .iter()
            .map(|kv| {
                let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Any::StringValue(s)) => s.clone(),
                    Some(Any::IntValue(i)) => i.to_string(),
                    other => format!("{other:?}"),
                };
                (kv.key.as_str(), v)
            })
            .collect();
        assert_eq!(attrs["host.name"], summary["hostname"].as_str().unwrap());
        assert_eq!(attrs["process.pid"], pid.to_string());
        assert_eq!(attrs["process.executable.name"], "bar-probe");
        assert_eq!(attrs["service.name"], "bar-probe");
        let scope = &rp.scope_profiles[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "bar");
        for p in &scope.profiles {
            let st = p.sample_type.unwrap();
            if (text(d, st.type_strindex), text(d, st.unit_strindex)) != ("samples", "count") {
                continue;
            }
            let pt = p.period_type.unwrap();
            assert_eq!(text(d, pt.type_strindex), "cpu");
            assert_eq!(p.period, 1_000_000_000 / 199);
            for s in &p.samples {
                let stack = &d.stack_table[s.stack_index as usize];
                let loc = &d.location_table[stack.location_indices[0] as usize];
                let f = &d.function_table[loc.lines[0].function_index as usize];
                *leaves
                    .entry(text(d, f.name_strindex).to_owned())
                    .or_default() += s.values[0];
                total += s.values[0];
                threads += s
                    .attribute_indices
                    .iter()
                    .filter(|&&a| {
                        text(d, d.attribute_table[a as usize].key_strindex) == "thread.id"
                    })
                    .count();
            }
        }
    }
    let folded = rec.folded("cpu");
    assert_eq!(total as u64, folded.total(), "pushed samples = cpu.folded");
    let top = leaves.iter().max_by_key(|(_, w)| **w).unwrap().0;
    assert!(top.contains("burn_cpu_hot_loop"), "{leaves:#?}");
    assert!(threads > 0, "samples carry thread.id");
    let p = push_entry(&summary, "otlp");
    assert_eq!(p["sent"], reqs.len() as u64, "{p}");
    assert_eq!(p["failed"], 0);
}

/// Records a workload that outlives `--duration 3s` with these backends; returns the
/// recording and how long bar-probe took from start to exit.
fn record_for_3s(name: &str, push_args: &[&str]) -> (Recording, Duration) {
    let dir = out_dir(name);
    let mut w = Workload::start(&["cpu", "--seconds", "20"]);
    let pid = w.pid().to_string();
    let mut args = vec![
        "attach",
        "--pid",
        &pid,
        "--events",
        "cpu",
        "--duration",
        "3s",
        "--push-every",
        "1s",
    ];
    args.extend_from_slice(push_args);
    let t0 = Instant::now();
    let rec = Recording::start_with_env(&args, &dir, &[NO_PROXY]);
    w.go();
    let rec = rec.finish();
    let took = t0.elapsed();
    let _ = w.child.kill();
    let _ = w.child.wait();
    (rec, took)
}

/// What a recording with failing backends must still be: stopped by its duration, complete,
/// with its samples.
fn assert_whole(rec: &Recording, took: Duration) -> Value {
    let summary = rec.summary();
    assert_eq!(summary["stop_reason"], "duration");
    assert_eq!(summary["complete"], true);
    assert!(rec.folded("cpu").total() > 0, "cpu samples recorded");
    // 3 s of recording, at most 1 s of waiting for the senders, the rest is start and render.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    summary
}

#[test]
fn backends_that_refuse_or_fail_leave_the_recording_whole() {
    if !root_or_skip("backends_that_refuse_or_fail_leave_the_recording_whole") {
        return;
    }
    let failing = Receiver::start(Answer::Status(500));
    let refused = refused_url();
    let (rec, took) = record_for_3s(
        "push-failing",
        &[
            "--pyroscope",
            &refused,
            "--otlp",
            &failing.url(),
            "--push-timeout",
            "1s",
        ],
    );
    let summary = assert_whole(&rec, took);
    let p = push_entry(&summary, "pyroscope");
    assert_eq!(p["sent"], 0, "{p}");
    assert!(p["failed"].as_u64().unwrap() >= 1, "{p}");
    assert!(p["last_error"].as_str().unwrap().contains("refused"), "{p}");
    let o = push_entry(&summary, "otlp");
    assert_eq!(o["sent"], 0, "{o}");
    // 500 is not tried again (OTLP/HTTP): one request per failed interval.
    let failed = o["failed"].as_u64().unwrap();
    assert!(failed >= 2, "{o}");
    assert_eq!(failing.requests().len() as u64, failed, "{o}");
    assert!(
        o["last_error"].as_str().unwrap().contains("HTTP 500"),
        "{o}"
    );
    assert!(
        rec.stderr.iter().any(|l| l.contains("pushed to otlp")),
        "the end says how pushing went: {:?}",
        rec.stderr
    );
}

#[test]
fn a_backend_that_never_answers_does_not_hold_the_recording() {
    if !root_or_skip("a_backend_that_never_answers_does_not_hold_the_recording") {
        return;
    }
    let silent = Receiver::start(Answer::Never);
    let (rec, took) = record_for_3s(
        "push-silent",
        &["--pyroscope", &silent.url(), "--push-timeout", "500ms"],
    );
    let summary = assert_whole(&rec, took);
    let p = push_entry(&summary, "pyroscope");
    assert_eq!(p["sent"], 0, "{p}");
    let lost = p["failed"].as_u64().unwrap() + p["dropped"].as_u64().unwrap();
    assert!(lost >= 3, "every interval failed or was dropped: {p}");
    assert!(
        p["last_error"]
            .as_str()
            .unwrap()
            .contains("no answer within 500ms"),
        "{p}"
    );
    assert!(!silent.requests().is_empty(), "it was asked");
}

/// Bad push flags stop the command line with one line each, and a password in a URL is not
/// repeated (no root needed: nothing is loaded).
#[test]
fn bad_push_flags_are_one_line_without_the_secret() {
    for (args, needle) in [
        (
            vec!["--pyroscope", "ftp://me:s3cret@host:4040"],
            "--pyroscope: 'ftp://REDACTED@host:4040' is not an http:// or https:// URL",
        ),
        (vec!["--otlp", "collector:4318"], "--otlp: 'collector:4318'"),
        (
            vec!["--pyroscope", "http://h", "--push-every", "200ms"],
            "use 1s or more",
        ),
        (
            vec!["--pyroscope", "http://h", "--app-name", "my app"],
            "not an application name",
        ),
    ] {
        let mut all = vec!["record", "--all", "--duration", "1s"];
        all.extend(args);
        let out = run(&all);
        let err = one_line_error(&out, needle);
        assert!(!err.contains(SECRET), "{err}");
        assert_eq!(out.status.code(), Some(2), "{err}");
    }
}
