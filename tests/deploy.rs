//! Fleet deployment files: Kubernetes manifests validated offline against a pinned Kubernetes
//! version, their profile accepted by stampede and sized so that every agent's share fits its
//! pod, results that outlive the Job, and the ssh script driven through stand-ins
//! for ssh and scp that run "remote" commands on this host.

mod common;

use std::io::{BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{SinkProcess, bin, read_json, repo};
use serde_json::Value;
use stampede::cli::{SUMMARY_BEGIN, SUMMARY_END};
use stampede::profile::sources::PortRange;
use stampede::profile::{Profile, TargetSpec};
use stampede::swarm::session::Cidr;

/// The Kubernetes version the manifests are checked against.
const KUBERNETES: &str = "1.34.0";

#[test]
fn kubernetes_manifests_validate_and_carry_a_valid_profile() {
    let manifests: Vec<_> = std::fs::read_dir(repo("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(manifests.len() >= 6, "{manifests:?}");
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "-k", KUBERNETES])
        .args(&manifests)
        .output()
        .expect("kubernetes-validate runs (scripts/test installs it from PyPI)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("WARN") && !text.contains("ERROR"), "{text}");

    // The profile inside the ConfigMap is one stampede accepts, and it fits each agent.
    let docs = manifests_json(&manifests);
    let find = |kind: &str, name: &str| -> &Value {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in deploy/kubernetes"))
    };
    let dir = tempfile::tempdir().unwrap();
    let profile_path = dir.path().join("profile.json");
    let profile_text = find("ConfigMap", "stampede-profile")["data"]["profile.json"]
        .as_str()
        .unwrap();
    std::fs::write(&profile_path, profile_text).unwrap();
    let profile = Profile::from_json(profile_text, &[]).unwrap();

    // The agents: how many, their pods' port range and their flags.
    let agents_job = find("Job", "stampede-agents");
    let agents = agents_job["spec"]["completions"].as_u64().unwrap() as usize;
    assert_eq!(
        agents_job["spec"]["parallelism"].as_u64(),
        Some(agents as u64)
    );
    let pod = &agents_job["spec"]["template"]["spec"];
    let range = pod["securityContext"]["sysctls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "net.ipv4.ip_local_port_range")
        .and_then(|s| s["value"].as_str())
        .expect("the agents' pods set their port range");
    let (first, last) = range.split_once(' ').unwrap();
    let range = PortRange {
        first: first.trim().parse().unwrap(),
        last: last.trim().parse().unwrap(),
    };
    let agent_args = args(&pod["containers"][0]);
    assert!(
        flag(&agent_args, "--sources").is_none(),
        "with --sources, check the share against them here"
    );
    let allowed: Vec<Cidr> = flag(&agent_args, "--allow-targets")
        .expect("agents name what they may load")
        .split(',')
        .map(|c| Cidr::parse(c).unwrap())
        .collect();
    for named in profile.addresses() {
        assert!(
            allowed.iter().any(|c| c.contains(named.addr.ip())),
            "{} ({}) is outside the agents' --allow-targets",
            named.addr,
            named.at
        );
    }

    // Every agent's share, with the agents' own fitting code and their pods' port range.
    let TargetSpec::Addrs(targets) = &profile.target else {
        panic!("a swarm's profile lists its targets");
    };
    let weights = vec![1; agents];
    let mut total = 0;
    for index in 0..agents {
        let share = profile.share(&weights, index);
        total += share.connections;
        let pool = stampede::stage::source_pool(&share, targets.clone(), range).unwrap();
        if let Err(e) = pool.check(share.peak_connections()) {
            panic!(
                "agent {index}'s share of {} does not fit its pod: {e}",
                share.connections
            );
        }
    }
    assert_eq!(total, profile.connections);

    // The coordinator waits for exactly those agents and keeps its results.
    let coordinator_job = find("Job", "stampede-coordinator");
    let coordinator = &coordinator_job["spec"]["template"]["spec"];
    let coordinator_args = args(&coordinator["containers"][0]);
    assert_eq!(
        flag(&coordinator_args, "--agents"),
        Some(agents.to_string())
    );
    assert_eq!(
        flag(&coordinator_args, "--out").as_deref(),
        Some("/results")
    );
    assert!(flag(&coordinator_args, "--junit").is_some_and(|j| j.starts_with("/results/")));
    assert!(coordinator_args.iter().any(|a| a == "--summary-to-log"));
    let results = coordinator["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "results")
        .unwrap();
    let claim = results["persistentVolumeClaim"]["claimName"]
        .as_str()
        .expect("results on a claim that outlives the Job, not an emptyDir");
    find("PersistentVolumeClaim", claim);

    // The Secret ships no usable token.
    let token = find("Secret", "stampede-token")["stringData"]["token"]
        .as_str()
        .unwrap();
    assert!(
        stampede::wire::weak_token(token.as_bytes()).is_some(),
        "{token:?}"
    );

    // And `profile check` agrees: one agent's share fits even a host with the default port
    // range (exit 1 would be a plan that does not fit, 2 a profile error).
    let check = bin()
        .args(["profile", "check", "--agents", &agents.to_string()])
        .arg(&profile_path)
        .output()
        .unwrap();
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
}

/// Every document of the YAML files, as JSON (PyYAML, which scripts/test installs).
fn manifests_json(files: &[std::path::PathBuf]) -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, yaml, json; print(json.dumps([d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]))",
        ])
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The value of `--name=VALUE` in a container's args.
fn flag(args: &[String], name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    args.iter()
        .find_map(|a| a.strip_prefix(&prefix).map(str::to_string))
}

#[test]
fn the_coordinator_prints_summary_json_to_its_log() {
    let sink = SinkProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("p.json");
    std::fs::write(
        &profile,
        serde_json::json!({
            "name": "to-log",
            "target": {"addrs": [sink.addr.to_string()]},
            "connections": 20,
            "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "500ms"}}]
        })
        .to_string(),
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let mut coordinator = bin()
        .args([
            "coordinator",
            "--headless",
            "--summary-to-log",
            "--listen",
            "127.0.0.1:0",
        ])
        .args(["--agents", "1", "--join-timeout", "20s", "--out"])
        .arg(&out_dir)
        .arg(&profile)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(coordinator.stderr.take().unwrap());
    let line = common::wait_for_line(&mut log, Duration::from_secs(10), |l| {
        l.contains("listening on")
    });
    let addr = common::listening_addr(&line);
    let agent = bin()
        .args(["agent", "--quiet", "--coordinator", &addr.to_string()])
        .output()
        .unwrap();
    assert_eq!(agent.status.code(), Some(0));
    let mut stdout = String::new();
    coordinator
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert_eq!(
        common::wait_child(&mut coordinator, Duration::from_secs(10)).code(),
        Some(0)
    );
    let (_, after) = stdout
        .split_once(&format!("{SUMMARY_BEGIN}\n"))
        .unwrap_or_else(|| panic!("no {SUMMARY_BEGIN} in {stdout}"));
    let (json, _) = after.split_once(&format!("\n{SUMMARY_END}")).unwrap();
    let logged: Value = serde_json::from_str(json).unwrap();
    assert_eq!(logged, read_json(&out_dir.join("summary.json")));
    common::assert_schema("summary.schema.json", &logged);
}

#[test]
fn swarm_over_ssh_with_stand_in_hosts() {
    let sink = SinkProcess::start();
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake");
    std::fs::create_dir_all(&fake).unwrap();
    // "ssh HOST CMD": run CMD here, with the remote directory moved under fake/HOST.
    let ssh = dir.path().join("ssh");
    std::fs::write(
        &ssh,
        format!(
            "#!/usr/bin/env bash\nhost=$1; shift\nmkdir -p {f}/$host\ncmd=\"$*\"\ncmd=${{cmd//\\/tmp\\/stampede-/{f}/$host/stampede-}}\nexec bash -c \"$cmd\"\n",
            f = fake.display()
        ),
    )
    .unwrap();
    // "scp -q SRC HOST:DST": copy into fake/HOST.
    let scp = dir.path().join("scp");
    std::fs::write(
        &scp,
        format!(
            "#!/usr/bin/env bash\n[[ $1 == -q ]] && shift\nsrc=$1; dst=$2\nhost=${{dst%%:*}}; path=${{dst#*:}}\npath=${{path//\\/tmp\\/stampede-/{f}/$host/stampede-}}\nmkdir -p \"$(dirname \"$path\")\"\ncp \"$src\" \"$path\"\n",
            f = fake.display()
        ),
    )
    .unwrap();
    for script in [&ssh, &scp] {
        Command::new("chmod")
            .arg("+x")
            .arg(script)
            .status()
            .unwrap();
    }
    let token = dir.path().join("token");
    std::fs::write(&token, "bA7q0FCs2/gaaOb2YvDCScsZmJssUWUwoXnh0PPooOQ=\n").unwrap();
    let profile = dir.path().join("p.json");
    std::fs::write(
        &profile,
        serde_json::json!({
            "name": "ssh-swarm",
            "target": {"addrs": [sink.addr.to_string()]},
            "connections": 200,
            "phases": [{"ramp": {"rate": 1000}}, {"hold": {"for": "1s"}}]
        })
        .to_string(),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out_dir = dir.path().join("out");
    let out = Command::new(repo("scripts/swarm-ssh.sh"))
        .args(["--profile"])
        .arg(&profile)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--token-file"])
        .arg(&token)
        .arg("--out")
        .arg(&out_dir)
        .args(["vm-a", "vm-b"])
        .env("SSH", &ssh)
        .env("SCP", &scp)
        .env("STAMPEDE_BIN", env!("CARGO_BIN_EXE_stampede"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = read_json(&out_dir.join("summary.json"));
    assert_eq!(summary["connections"]["connected"], 200);
    let names: Vec<&str> = summary["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"vm-a") && names.contains(&"vm-b"),
        "{names:?}"
    );
    assert!(
        fake.join("vm-a").read_dir().unwrap().next().is_some(),
        "the binary was copied to the host"
    );
}
