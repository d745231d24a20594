//! Restarting the machine's own Postgres and RabbitMQ, the way an operator
//! (or a crash and its supervisor) would: every client loses its
//! connections, the port refuses new ones until the service is back, and
//! only what the service wrote to disk survives.
//!
//! Both are the Debian packages' services: Postgres through `pg_ctlcluster`
//! (a fast shutdown, which ends every session), RabbitMQ by shutting the
//! whole node down with `rabbitmqctl shutdown` and starting it with the
//! package's init script. [`SystemServices`] starts whichever is down when
//! it is dropped, so that a driver that fails halfway never leaves the
//! machine without them.

use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// Where the services listen on loopback.
const POSTGRES_PORT: u16 = 5432;
const RABBITMQ_PORT: u16 = 5672;

/// The machine's Postgres cluster and RabbitMQ node. Its calls block while
/// a service stops and starts (seconds); async callers run them with
/// `tokio::task::spawn_blocking`.
pub struct SystemServices {
    /// Postgres major version, the folder name under `/etc/postgresql`.
    postgres_version: String,
}

impl SystemServices {
    /// Finds the Postgres cluster (`main` of the first version installed).
    pub fn detect() -> anyhow::Result<Self> {
        let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
            .context("no /etc/postgresql: is Debian's PostgreSQL installed?")?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        versions.sort();
        let postgres_version = versions
            .into_iter()
            .next()
            .context("no Postgres cluster under /etc/postgresql")?;
        Ok(Self { postgres_version })
    }

    /// Restarts Postgres; returns how long it was away.
    pub fn restart_postgres(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.pg_ctlcluster("restart")?;
        wait_for_port("Postgres", POSTGRES_PORT)?;
        Ok(started.elapsed())
    }

    /// Shuts the RabbitMQ node down and starts it again; returns how long
    /// it was away.
    pub fn restart_rabbitmq(&self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        run("rabbitmqctl", &["shutdown"])?;
        start_rabbitmq()?;
        Ok(started.elapsed())
    }

    /// Starts whichever of the two is not listening.
    pub fn ensure_running(&self) -> anyhow::Result<()> {
        if !listening(POSTGRES_PORT) {
            self.pg_ctlcluster("start")?;
            wait_for_port("Postgres", POSTGRES_PORT)?;
        }
        if !listening(RABBITMQ_PORT) {
            start_rabbitmq()?;
        }
        Ok(())
    }

    fn pg_ctlcluster(&self, action: &str) -> anyhow::Result<()> {
        run(
            "pg_ctlcluster",
            &[
                "--skip-systemctl-redirect",
                &self.postgres_version,
                "main",
                action,
            ],
        )
    }
}

impl Drop for SystemServices {
    fn drop(&mut self) {
        if let Err(error) = self.ensure_running() {
            eprintln!("cannot start the system services again: {error:#}; run scripts/services.sh");
        }
    }
}

/// Starts the RabbitMQ node with the package's init script (which returns
/// once the node runs), or detached where there is none, then waits until
/// it accepts connections.
fn start_rabbitmq() -> anyhow::Result<()> {
    if std::path::Path::new("/etc/init.d/rabbitmq-server").exists() {
        run("service", &["rabbitmq-server", "start"])?;
    } else {
        run("rabbitmq-server", &["-detached"])?;
    }
    run("rabbitmqctl", &["await_startup"])?;
    wait_for_port("RabbitMQ", RABBITMQ_PORT)
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn listening(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// A service restart on a busy two-core machine takes seconds; a minute
/// means it is not coming back by itself.
const SERVICE_START_TIMEOUT: Duration = Duration::from_secs(60);

fn wait_for_port(name: &str, port: u16) -> anyhow::Result<()> {
    let started = Instant::now();
    while !listening(port) {
        if started.elapsed() > SERVICE_START_TIMEOUT {
            bail!("{name} is not listening on 127.0.0.1:{port} after {SERVICE_START_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}
