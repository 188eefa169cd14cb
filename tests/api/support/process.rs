//! The `order-service` binary as a process: started with a clean environment, waited on
//! until it answers or exits, signalled, and killed by its own pid when a test lets go.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::http::health_status;

pub const BIN: &str = env!("CARGO_BIN_EXE_order-service");

/// The service binary with an empty environment but PATH, so the developer's settings
/// never leak into a test, run in `dir` with no standard input.
pub fn clean_command(dir: &Path) -> Command {
    cleaned(Command::new(BIN), dir)
}

/// `command` (any program: a shell that starts the service, say) with the environment
/// and folder of [`clean_command`].
pub fn cleaned(mut command: Command, dir: &Path) -> Command {
    command
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        )
        .current_dir(dir)
        .stdin(Stdio::null());
    command
}

/// [`clean_command`] with `args` and `env`.
pub fn command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = clean_command(dir);
    command.envs(env.iter().copied()).args(args);
    command
}

/// A product service nothing answers at: port 1 is privileged, and no test binds it. (A
/// port `free_port` gave may be another test's service by the time it is dialled.)
pub const CLOSED_PORT_URL: &str = "http://127.0.0.1:1";

/// A port nothing listens on just now. Another process may take it before the service
/// binds it: callers that start a service on it try again when that happens.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process this test started; killed (SIGKILL, by its own pid) when dropped.
pub struct ChildGuard(Option<Child>);

impl ChildGuard {
    /// Starts `command`; panics if it cannot.
    pub fn spawn(command: &mut Command) -> ChildGuard {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        ChildGuard(Some(child))
    }

    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("the process is still ours")
    }

    /// The process's id while it is ours.
    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// Its exit status if it has exited, without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.0.as_mut()?.try_wait().expect("try_wait")
    }

    /// Waits up to `timeout` for the process to exit on its own. Returns its exit status
    /// (the process is then forgotten), or `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                self.0 = None;
                return Some(status);
            }
            if self.0.is_none() || Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` ("TERM", "INT", …) with `kill -<signal> <pid>`.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the service is not running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .unwrap_or_else(|e| panic!("cannot run kill: {e}"));
        assert!(status.success(), "kill -{signal} {pid}: {status}");
    }

    /// SIGKILL: no chance to clean up, as in a power cut.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls /health on `port` until it answers 200 (Ok), or the process exits or 10 s pass.
pub fn wait_healthy(process: &mut ChildGuard, port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answered = false;
    loop {
        if let Some(status) = process.exited() {
            return Err(format!("the process exited with {status}"));
        }
        // A neighbour that took the same port answers too, while ours is still migrating
        // (it binds after); then ours exits with the port in use.
        if health_status(port) == Ok(200) {
            if process.pid().is_some_and(|pid| listens(pid, port)) {
                return Ok(());
            }
            answered = true;
        }
        if Instant::now() > deadline {
            return Err(if answered {
                format!("port {port} answered 200, but not from a socket of this process")
            } else {
                format!("GET /health on port {port} did not answer 200 within 10 s")
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether process `pid` holds the socket listening on TCP `port`: the socket's inode
/// from /proc/net/tcp (or tcp6) among the process's open files.
fn listens(pid: u32, port: u16) -> bool {
    const LISTEN: &str = "0A";
    let tables = ["/proc/net/tcp", "/proc/net/tcp6"]
        .map(|table| std::fs::read_to_string(table).unwrap_or_default());
    let port = format!(":{port:04X}");
    let sockets: Vec<String> = tables
        .iter()
        .flat_map(|table| table.lines().skip(1))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let listening = fields.get(1).is_some_and(|local| local.ends_with(&port))
                && fields.get(3) == Some(&LISTEN);
            let inode = fields.get(9).filter(|_| listening)?;
            Some(format!("socket:[{inode}]"))
        })
        .collect();
    let Ok(files) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    files.flatten().any(|file| {
        std::fs::read_link(file.path())
            .is_ok_and(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str()))
    })
}

/// What a finished command printed, and how it ended.
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a command that must finish by itself within 20 s (killed and failed otherwise).
pub fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Finished {
    let mut process = ChildGuard::spawn(
        command(dir, args, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let mut out_pipe = process.child().stdout.take().unwrap();
    let mut err_pipe = process.child().stderr.take().unwrap();
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let Some(status) = process.wait_exit(Duration::from_secs(20)) else {
        drop(process);
        panic!(
            "order-service {args:?} did not exit within 20 s; stderr: {}",
            err_thread.join().unwrap()
        );
    };
    Finished {
        status,
        stdout: out_thread.join().unwrap(),
        stderr: err_thread.join().unwrap(),
    }
}

/// `serve` (or `args`) in the background, stdout and stderr to `serve.stdout` and
/// `serve.stderr` in `dir`.
pub fn spawn_serve(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> ChildGuard {
    let stderr = std::fs::File::create(dir.join("serve.stderr")).unwrap();
    let stdout = std::fs::File::create(dir.join("serve.stdout")).unwrap();
    ChildGuard::spawn(
        command(dir, args, env)
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr)),
    )
}

/// [`wait_healthy`] for a [`spawn_serve`] process; a failure quotes its stderr.
pub fn wait_serving(process: &mut ChildGuard, port: u16, dir: &Path) -> Result<(), String> {
    wait_healthy(process, port).map_err(|failure| {
        format!(
            "{failure}; stderr: {}",
            std::fs::read_to_string(dir.join("serve.stderr")).unwrap_or_default()
        )
    })
}
