//! systemd as PID 1 in a container (systemd-nspawn) with the service installed by README's
//! steps word for word: it starts, answers, keeps an order over a restart, stops cleanly,
//! refuses a bad setting without a restart loop, and leaves no secret in the journal.
//!
//! `systemd-analyze verify` (operations.rs) reads the unit; only a booted systemd runs it
//! as the dynamic user, with the sandbox, against the installed env file.
//!
//! Needs root. The Debian 12 root file system is made once with debootstrap (about a
//! minute) in `ROOT_CACHE` and reused; every run boots a throwaway copy of it
//! (`--ephemeral`), so no run sees another's leftovers.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::support::{loud_skip, temp_dir, TempDir, BIN};

/// Where the reusable root file system lives: outside the repository, kept between runs.
const ROOT_CACHE: &str = "/var/cache/order-service-test";
const SUITE: &str = "bookworm";
/// Inside the container: a checkout holding what README's install steps copy from.
const CHECKOUT: &str = "/root/order-service";
/// Inside the container, readable by the service's dynamic user (/etc/order-service is not).
const CATALOG: &str = "/srv/catalog.json";
const ENV_FILE: &str = "/etc/order-service/order-service.env";
const UNIT: &str = "order-service.service";
/// What `systemd-analyze security` says of the unit must stay at or below this.
const MAX_EXPOSURE: f64 = 1.4;

#[test]
fn readme_install_runs_under_a_real_systemd() {
    let Some(root) = prepare() else {
        return;
    };
    let container = Container::boot(&root);

    // --- Install: README's steps, run as written (the build is the harness's) -----------
    let steps = readme_install_steps();
    assert_eq!(
        unit_install_steps(),
        steps,
        "the unit's header and README's Operating section give different install steps"
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    container.copy_in(
        Path::new(BIN),
        &format!("{CHECKOUT}/target/release/order-service"),
    );
    for file in ["config/order-service.env", "systemd/order-service.service"] {
        container.copy_in(&repo.join(file), &format!("{CHECKOUT}/{file}"));
    }
    let install = container.sh(&format!("set -e\ncd {CHECKOUT}\n{}", steps.join("\n")));
    assert!(
        install.status.success(),
        "README's install steps failed ({}):\n{}{}\n{}",
        install.status,
        text(&install.stdout),
        text(&install.stderr),
        container.unit_report()
    );
    container.assert_running("after `systemctl enable --now`");
    let unit = container.show(&["UnitFileState", "After"]);
    assert_eq!(unit["UnitFileState"], "enabled");
    assert!(
        unit["After"].split(' ').any(|u| u == "time-sync.target"),
        "the unit is not ordered after time-sync.target: After={}",
        unit["After"]
    );
    let (status, body) = container.http("GET", "/health", &[], None);
    assert_eq!((status, body.trim()), (200, r#"{"status":"ok"}"#));
    let exposure = container.exposure();
    assert!(
        exposure <= MAX_EXPOSURE,
        "systemd-analyze security: exposure {exposure} > {MAX_EXPOSURE}"
    );

    // --- Configure: secrets and a catalog in the env file, then restart ----------------
    let canary = format!(
        "canary{}x{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    container.write(
        CATALOG,
        r#"[{"id":1,"name":"Kiosk Laptop","price":999.99,"stock":5}]"#,
    );
    // A broker name that never resolves (RFC 2606), as when DNS is down at boot: the
    // relay's retries log its errors, and none may carry the password.
    let configured = edit_env(&[
        ("RABBITMQ_HOST", "broker.invalid"),
        ("SECRET_KEY", &canary),
        ("RABBITMQ_PASSWORD", &canary),
        ("ADMIN_TOKEN", &canary),
        ("PRODUCT_SERVICE_URL", &format!("file:{CATALOG}")),
    ]);
    container.write(ENV_FILE, &configured);
    assert_eq!(
        container.sh_ok(&format!("stat -c '%U %a' /etc/order-service {ENV_FILE}")),
        "root 750\nroot 640\n",
        "the secrets are readable beyond root"
    );
    container.systemctl_ok(&["restart", "order-service"]);
    container.assert_running("after the restart that reads the edited env file");

    // --- An order survives `systemctl restart` -------------------------------------------
    let alice = [
        ("X-User-Id", "alice"),
        ("X-User-Email", "alice@example.com"),
    ];
    let (status, created) = container.http(
        "POST",
        "/api/orders",
        &alice,
        Some(r#"{"items":[{"product_id":1,"quantity":2}]}"#),
    );
    assert_eq!(status, 201, "create an order: {created}");
    let created: Value = serde_json::from_str(&created).expect("the order as JSON");
    let id = created["id"].as_i64().expect("the order's id");
    let first_pid = container.show(&["MainPID"])["MainPID"].clone();
    container.systemctl_ok(&["restart", "order-service"]);
    container.assert_running("after `systemctl restart`");
    assert_ne!(
        container.show(&["MainPID"])["MainPID"],
        first_pid,
        "the restart did not start a new process"
    );
    let (status, fetched) = container.http("GET", &format!("/api/orders/{id}"), &alice, None);
    assert_eq!(status, 200, "the order after the restart: {fetched}");
    let fetched: Value = serde_json::from_str(&fetched).expect("the order as JSON");
    assert_eq!(fetched, created, "the order changed over the restart");

    // --- `systemctl stop` ends cleanly, well inside TimeoutStopSec -----------------------
    let stop_timeout = container.show_duration("TimeoutStopUSec");
    let stopping = Instant::now();
    container.systemctl_ok(&["stop", "order-service"]);
    let took = stopping.elapsed();
    assert!(
        took < stop_timeout / 3,
        "`systemctl stop` took {took:?}; TimeoutStopSec is {stop_timeout:?}"
    );
    let stopped = container.show(&["ActiveState", "Result", "ExecMainCode", "ExecMainStatus"]);
    assert_eq!(
        (
            stopped["ActiveState"].as_str(),
            stopped["Result"].as_str(),
            stopped["ExecMainStatus"].as_str()
        ),
        ("inactive", "success", "0"),
        "not a clean stop: {stopped:?}\n{}",
        container.unit_report()
    );

    // --- A bad setting stops start-up: failed at once, no restart loop -------------------
    let bad = configured.replace("\nPORT=8003\n", "\nPORT=not-a-port\n");
    assert_ne!(bad, configured, "the env file has no PORT=8003 line");
    container.write(ENV_FILE, &bad);
    let start = container.systemctl(&["start", "order-service"]);
    assert!(
        !start.status.success(),
        "`systemctl start` succeeded with PORT=not-a-port"
    );
    // Three times RestartSec: a restart loop has shown itself by now.
    std::thread::sleep(Duration::from_secs(6));
    let failed = container.show(&["ActiveState", "NRestarts", "ExecMainStatus"]);
    assert_eq!(
        (
            failed["ActiveState"].as_str(),
            failed["NRestarts"].as_str(),
            failed["ExecMainStatus"].as_str()
        ),
        ("failed", "0", "2"),
        "a bad setting must fail the unit without restarts\n{}",
        container.unit_report()
    );
    let unit_log = container.sh_ok("journalctl -u order-service --no-pager -o cat");
    assert!(
        unit_log.lines().any(|l| l.contains("PORT")),
        "no line names the bad setting:\n{unit_log}"
    );

    // --- The journal holds no secret ------------------------------------------------------
    let journal = container.sh_ok("journalctl -b --no-pager -o verbose");
    assert!(
        journal.contains("listening on http://127.0.0.1:8003"),
        "the service's own lines are not in the journal"
    );
    let shown = container.systemctl(&["show", "order-service"]);
    for (what, output) in [
        ("the journal", journal),
        ("systemctl show", text(&shown.stdout)),
    ] {
        let leaks: Vec<&str> = output.lines().filter(|l| l.contains(&canary)).collect();
        assert!(
            leaks.is_empty(),
            "a secret in {what}:\n{}",
            leaks.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------
// The install steps, as README and the unit's header write them
// ---------------------------------------------------------------------------------------

/// The commands of README's **Install** block, but `cargo build`: the harness built the binary.
fn readme_install_steps() -> Vec<String> {
    let readme = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let block: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("**Install**"))
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect();
    assert!(!block.is_empty(), "README has no **Install** code block");
    block
        .into_iter()
        .filter(|l| !l.starts_with("cargo build"))
        .map(command_of)
        .collect()
}

/// The `# Install:` lines at the top of systemd/order-service.service.
fn unit_install_steps() -> Vec<String> {
    let unit = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/order-service.service"),
    )
    .expect("read the unit");
    unit.lines()
        .skip_while(|l| *l != "# Install:")
        .skip(1)
        .map_while(|l| l.strip_prefix("#   "))
        .map(command_of)
        .collect()
}

/// A line without its trailing `# comment` and spaces.
fn command_of(line: &str) -> String {
    line.split(" #").next().unwrap_or(line).trim().to_string()
}

/// The repository's env file with `KEY=value` set for each pair, where the file has a
/// `KEY=` or `#KEY=` line: the edit README's "then edit it" asks for.
fn edit_env(settings: &[(&str, &str)]) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/order-service.env");
    let mut text = fs::read_to_string(&file).expect("read config/order-service.env");
    for (key, value) in settings {
        let mut found = false;
        text = text
            .lines()
            .map(|line| {
                let setting = line.strip_prefix('#').unwrap_or(line);
                if setting.starts_with(&format!("{key}=")) {
                    found = true;
                    format!("{key}={value}")
                } else {
                    line.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
        assert!(found, "config/order-service.env has no {key}= line");
    }
    text
}

// ---------------------------------------------------------------------------------------
// The container
// ---------------------------------------------------------------------------------------

/// A booted throwaway copy of the root file system. Dropping it powers it off (and
/// kills systemd-nspawn if that takes too long), also when an assertion failed.
struct Container {
    nspawn: Child,
    pid1: u32,
    dir: TempDir,
}

impl Container {
    fn boot(root: &Path) -> Container {
        let dir = temp_dir();
        let log = fs::File::create(dir.path().join("nspawn.log")).expect("create nspawn.log");
        // No systemd or D-Bus on the host: no registration; the network is the
        // container's own loopback.
        let nspawn = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(root)
            .args([
                "-b",
                "--register=no",
                "--keep-unit",
                "--private-network",
                "--console=passive",
                "--ephemeral",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start systemd-nspawn");
        let mut container = Container {
            nspawn,
            pid1: 0,
            dir,
        };
        container.pid1 = container.find_pid1(Duration::from_secs(120));
        // Until systemd listens on its socket, systemctl cannot even ask.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let output = container.run(&["systemctl", "is-system-running", "--wait"]);
            let state = text(&output.stdout);
            if matches!(state.trim(), "running" | "degraded") {
                return container;
            }
            assert!(
                state.trim().is_empty() && Instant::now() < deadline,
                "the container did not boot: {state:?} {}\n{}",
                text(&output.stderr),
                container.nspawn_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// systemd-nspawn's child once it is systemd: the copy of the root takes a while.
    fn find_pid1(&mut self, limit: Duration) -> u32 {
        let deadline = Instant::now() + limit;
        let task_dir = format!("/proc/{}/task", self.nspawn.id());
        loop {
            if let Ok(Some(status)) = self.nspawn.try_wait() {
                panic!("systemd-nspawn exited ({status}):\n{}", self.nspawn_log());
            }
            let children = fs::read_dir(&task_dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
                .collect::<Vec<_>>()
                .join(" ");
            let pid1 = children
                .split_whitespace()
                .filter_map(|pid| pid.parse::<u32>().ok())
                .find(|pid| {
                    fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|comm| comm.trim() == "systemd")
                });
            if let Some(pid1) = pid1 {
                return pid1;
            }
            assert!(
                Instant::now() < deadline,
                "no systemd in the container after {limit:?}:\n{}",
                self.nspawn_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a command inside, in all the container's namespaces, with a clean environment.
    fn run(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("120")
            .arg("nsenter")
            .args(["-t", &self.pid1.to_string(), "-a", "env", "-i"])
            .args(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
            .args(["LANG=C.UTF-8", "SYSTEMD_COLORS=0", "SYSTEMD_PAGER="])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    fn sh(&self, script: &str) -> Output {
        self.run(&["sh", "-c", script])
    }

    /// Runs a script inside that must succeed; its standard output.
    fn sh_ok(&self, script: &str) -> String {
        let output = self.sh(script);
        assert!(
            output.status.success(),
            "`{script}` failed ({}): {}",
            output.status,
            text(&output.stderr)
        );
        text(&output.stdout)
    }

    fn systemctl(&self, args: &[&str]) -> Output {
        let mut command = vec!["systemctl"];
        command.extend_from_slice(args);
        self.run(&command)
    }

    fn systemctl_ok(&self, args: &[&str]) {
        let output = self.systemctl(args);
        assert!(
            output.status.success(),
            "`systemctl {}` failed ({}): {}\n{}",
            args.join(" "),
            output.status,
            text(&output.stderr),
            self.unit_report()
        );
    }

    /// `systemctl show` of the unit's properties.
    fn show(&self, properties: &[&str]) -> HashMap<String, String> {
        let output = self.systemctl(&["show", UNIT, "-p", &properties.join(",")]);
        text(&output.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A time property, which `systemctl show` prints as e.g. "30s" or "1min 30s".
    fn show_duration(&self, property: &str) -> Duration {
        let value = self.show(&[property])[property].clone();
        value
            .split_whitespace()
            .map(|part| {
                let digits = part.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                let n: u64 = digits.parse().ok()?;
                match &part[digits.len()..] {
                    "min" => Some(Duration::from_secs(n * 60)),
                    "s" => Some(Duration::from_secs(n)),
                    "ms" => Some(Duration::from_millis(n)),
                    _ => None,
                }
            })
            .sum::<Option<Duration>>()
            .unwrap_or_else(|| panic!("{property}={value}: not a time I can read"))
    }

    fn assert_running(&self, when: &str) {
        let unit = self.show(&["ActiveState", "SubState", "NRestarts"]);
        assert_eq!(
            (
                unit["ActiveState"].as_str(),
                unit["SubState"].as_str(),
                unit["NRestarts"].as_str()
            ),
            ("active", "running", "0"),
            "the service is not running {when}\n{}",
            self.unit_report()
        );
    }

    /// An HTTP request to the service from inside (it binds the container's loopback):
    /// the status and the body.
    fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, String) {
        let url = format!("http://127.0.0.1:8003{path}");
        let header_args: Vec<String> = headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        let mut args = vec![
            "curl",
            "-sS",
            "--max-time",
            "10",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ];
        for header in &header_args {
            args.extend(["-H", header]);
        }
        if let Some(body) = body {
            args.extend(["-H", "Content-Type: application/json", "--data-raw", body]);
        }
        args.push(&url);
        let output = self.run(&args);
        let out = text(&output.stdout);
        let (body, status) = out.rsplit_once('\n').unwrap_or(("", &out));
        let status = status.trim().parse().unwrap_or_else(|_| {
            panic!(
                "{method} {path}: no HTTP answer ({}): {}\n{}",
                output.status,
                text(&output.stderr),
                self.unit_report()
            )
        });
        (status, body.to_string())
    }

    /// `systemd-analyze security`'s overall exposure level for the unit.
    fn exposure(&self) -> f64 {
        let report = text(
            &self
                .run(&["systemd-analyze", "security", UNIT, "--no-pager"])
                .stdout,
        );
        report
            .lines()
            .find_map(|l| l.split_once("Overall exposure level for order-service.service: "))
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in:\n{report}"))
    }

    /// Copies a host file to `inside`, creating its folders.
    fn copy_in(&self, from: &Path, inside: &str) {
        let to = self.host_path(inside);
        fs::create_dir_all(to.parent().unwrap()).expect("create the folder inside");
        fs::copy(from, &to).unwrap_or_else(|e| panic!("copy {} in: {e}", from.display()));
    }

    /// Writes a file inside, keeping the mode of one that exists, else mode 0644.
    fn write(&self, inside: &str, contents: &str) {
        let to = self.host_path(inside);
        let existed = to.exists();
        fs::write(&to, contents).unwrap_or_else(|e| panic!("write {inside}: {e}"));
        if !existed {
            fs::set_permissions(&to, fs::Permissions::from_mode(0o644)).unwrap();
        }
    }

    /// The container's file seen from the host, through its PID 1's root.
    fn host_path(&self, inside: &str) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.pid1)).join(inside.trim_start_matches('/'))
    }

    /// `systemctl status` and the unit's last journal lines, for a failure message.
    fn unit_report(&self) -> String {
        let status = self.systemctl(&["status", UNIT, "--no-pager", "-n", "20"]);
        format!("--- systemctl status {UNIT}\n{}", text(&status.stdout))
    }

    fn nspawn_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("nspawn.log")).unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.nspawn.try_wait() {
            return;
        }
        // SIGTERM makes systemd-nspawn power the container off and delete the copy.
        let _ = Command::new("kill")
            .args(["-TERM", &self.nspawn.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Tools and the root file system
// ---------------------------------------------------------------------------------------

/// The root file system to boot, with the tools installed; None (after a loud note)
/// when this cannot run here and CI is not set.
fn prepare() -> Option<PathBuf> {
    if !is_root() {
        if std::env::var_os("CI").is_some() {
            panic!("the systemd boot test needs root, and CI is set");
        }
        loud_skip(
            "readme_install_runs_under_a_real_systemd: not root, so no container; \
             the documented systemd install was NOT tried",
        );
        return None;
    }
    let missing: Vec<&str> = [
        ("systemd-nspawn", "systemd-container"),
        ("debootstrap", "debootstrap"),
    ]
    .into_iter()
    .filter(|(tool, _)| !on_path(tool))
    .map(|(_, package)| package)
    .collect();
    if !missing.is_empty() {
        let installed = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "apt-get update -qq && apt-get install -y -qq --no-install-recommends {}",
                missing.join(" ")
            ))
            .stdin(Stdio::null())
            .output()
            .expect("run apt-get");
        assert!(
            installed.status.success(),
            "apt-get install {}: {}",
            missing.join(" "),
            text(&installed.stderr)
        );
    }
    Some(root_file_system())
}

/// `ROOT_CACHE/bookworm`, made with debootstrap unless a finished one is there. It is
/// built under a name of this process's own and renamed when complete; the marker beside
/// it, written last, tells a finished root from one a killed run left half made.
fn root_file_system() -> PathBuf {
    let cache = Path::new(ROOT_CACHE);
    let root = cache.join(SUITE);
    let marker = cache.join(format!("{SUITE}.complete"));
    remove_stale_copies(cache);
    if marker.exists() && root.join("sbin/init").exists() {
        return root;
    }
    fs::create_dir_all(cache).expect("create the root cache");
    let partial = cache.join(format!("{SUITE}.partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&partial);
    let mirror = debian_mirror();
    let started = Instant::now();
    let output = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=systemd,systemd-sysv,dbus,curl",
            SUITE,
        ])
        .arg(&partial)
        .arg(&mirror)
        .stdin(Stdio::null())
        .output()
        .expect("run debootstrap");
    if !output.status.success() {
        let _ = fs::remove_dir_all(&partial);
        panic!(
            "debootstrap {SUITE} from {mirror} failed ({}):\n{}{}",
            output.status,
            text(&output.stdout),
            text(&output.stderr)
        );
    }
    eprintln!("debootstrap {SUITE} from {mirror}: {:?}", started.elapsed());
    if !marker.exists() {
        let _ = fs::remove_dir_all(&root);
    }
    if fs::rename(&partial, &root).is_err() {
        // Another run finished first.
        let _ = fs::remove_dir_all(&partial);
    }
    fs::write(&marker, "").expect("write the marker");
    root
}

/// systemd-nspawn deletes its `--ephemeral` copy (`.#machine.*` beside the root) when it
/// powers off; one killed instead leaves it behind. No run lasts an hour.
fn remove_stale_copies(cache: &Path) {
    let Ok(entries) = fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > Duration::from_secs(3600));
        if stale
            && entry
                .file_name()
                .to_string_lossy()
                .starts_with(".#machine.")
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// The first `deb` source for the suite in the host's apt configuration (one-line
/// `.list` or deb822 `.sources`), else Debian's own mirror.
fn debian_mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        let name = file.to_string_lossy();
        let found = if name.ends_with(".sources") {
            mirror_in_deb822(&text)
        } else if name.ends_with(".list") {
            mirror_in_one_line_list(&text)
        } else {
            None
        };
        if let Some(mirror) = found {
            return mirror;
        }
    }
    "http://deb.debian.org/debian".to_string()
}

fn mirror_in_one_line_list(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace().filter(|w| !w.starts_with('['));
        if words.next()? != "deb" {
            return None;
        }
        // Options in brackets may hold spaces: `[ arch=amd64 ]`.
        let mut words = words.skip_while(|w| w.contains('=') || *w == "]");
        let uri = words.next()?;
        (words.next()? == SUITE).then(|| uri.to_string())
    })
}

fn mirror_in_deb822(text: &str) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let fields: HashMap<String, String> = stanza
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let has = |key: &str, word: &str| {
            fields
                .get(key)
                .is_some_and(|v| v.split_whitespace().any(|w| w == word))
        };
        if !has("types", "deb") || !has("suites", SUITE) || has("enabled", "no") {
            return None;
        }
        fields
            .get("uris")?
            .split_whitespace()
            .next()
            .map(String::from)
    })
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
