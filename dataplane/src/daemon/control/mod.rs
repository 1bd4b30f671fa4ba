//! The control socket: a Unix stream socket (mode 0600) speaking JSON lines, the messages of
//! [`protocol`]: each request one JSON object on one line, `{"cmd": ...}`; each reply one line,
//! `{"ok": true, ...}` or `{"ok": false, "error": "..."}`. Peers are checked by their
//! credentials (SO_PEERCRED): only root and the daemon's own user may talk to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use margay_rulecompiler::policy::Flow;
use serde::Serialize;
use serde_json::Value;

use super::Shared;
use super::worker::{self, FlowFilter};

pub mod protocol;

pub use protocol::{Body, FlowInfo, Reply, Request};

/// Longest request line accepted.
pub const MAX_REQUEST: u64 = 64 * 1024;

/// The bound control socket.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    listener: UnixListener,
}

impl Server {
    /// Binds `path` (mode 0600), replacing a stale socket file; refuses when a daemon answers
    /// on it.
    pub fn bind(path: &Path) -> anyhow::Result<Server> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                bail!(
                    "control socket {}: the path exists and is not a socket: refusing to replace it",
                    path.display()
                );
            }
            if UnixStream::connect(path).is_ok() {
                bail!("control socket {}: another margay daemon is listening there", path.display());
            }
            std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("control socket {}", path.display()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))?;
        Ok(Server { path: path.to_owned(), listener })
    }

    /// Accepts clients on a thread until `shared.stop`; each client gets its own thread.
    pub fn serve(&self, shared: Arc<Shared>) -> anyhow::Result<std::thread::JoinHandle<()>> {
        let listener = self.listener.try_clone()?;
        let stop = Arc::clone(&shared);
        let handle = move |conn: UnixStream| client(conn, &shared);
        Ok(std::thread::Builder::new()
            .name("margay-control".into())
            .spawn(move || accept(&listener, &|| stop.stop.load(Ordering::Relaxed), Arc::new(handle)))?)
    }

    /// Unblocks the acceptor (after `stop` is set).
    pub fn wake(&self) {
        let _ = UnixStream::connect(&self.path);
    }

    /// Removes the socket file.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Most control connections served at once. Each has a thread; past this, a connection gets
/// an error reply and is closed (2,000 idle connections once made 2,000 threads).
pub const MAX_CLIENTS: usize = 32;

/// Gives back a connection's place when its thread ends (or could not start).
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until `stopped()`, each served by `handle` on a thread of its own, at
/// most [`MAX_CLIENTS`] at once.
fn accept(
    listener: &UnixListener,
    stopped: &dyn Fn() -> bool,
    handle: Arc<dyn Fn(UnixStream) + Send + Sync>,
) {
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stopped() {
            break;
        }
        let Ok(mut conn) = conn else { continue };
        if active.fetch_add(1, Ordering::Relaxed) >= MAX_CLIENTS {
            active.fetch_sub(1, Ordering::Relaxed);
            let _ = reply(
                &mut conn,
                &Reply::error(format!("too many control connections ({MAX_CLIENTS} open): try again")),
            );
            continue;
        }
        let place = Place(Arc::clone(&active));
        let handle = Arc::clone(&handle);
        let _ = std::thread::Builder::new().name("margay-ctl-client".into()).spawn(move || {
            let _place = place;
            handle(conn);
        });
    }
}

fn peer_allowed(conn: &UnixStream) -> Result<(), String> {
    let cred = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() == 0 || cred.uid() == me {
        Ok(())
    } else {
        Err(format!(
            "permission denied: peer uid {} is neither root nor the daemon's user ({me})",
            cred.uid()
        ))
    }
}

fn reply(conn: &mut UnixStream, r: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(r).unwrap_or_default();
    line.push(b'\n');
    conn.write_all(&line)
}

fn client(mut conn: UnixStream, shared: &Shared) {
    if let Err(e) = peer_allowed(&conn) {
        tracing::warn!("control socket: {e}");
        let _ = reply(&mut conn, &Reply::error(e));
        return;
    }
    let _ = conn.set_read_timeout(Some(Duration::from_secs(300)));
    let Ok(read_half) = conn.try_clone() else { return };
    let mut reader = BufReader::new(read_half.take(u64::MAX));
    let mut line = Vec::new();
    loop {
        line.clear();
        reader.get_mut().set_limit(MAX_REQUEST + 1);
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(n) if n as u64 > MAX_REQUEST => {
                let _ = reply(&mut conn, &Reply::error(format!("request longer than {MAX_REQUEST} bytes")));
                return;
            }
            Ok(_) => {}
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        let answer = match parse_request(&line) {
            Ok(req) => handle(req, shared),
            Err(bad) => bad,
        };
        if reply(&mut conn, &answer).is_err() {
            return;
        }
    }
}

/// A request line as a [`Request`], or the reply that says what is wrong with it (not UTF-8:
/// once closed without a word; not JSON; not a request).
fn parse_request(line: &[u8]) -> Result<Request, Reply> {
    let text = std::str::from_utf8(line).map_err(|e| {
        Reply::error(format!("bad request: not UTF-8 (invalid byte at offset {})", e.valid_up_to()))
    })?;
    serde_json::from_str::<Request>(text).map_err(|e| {
        Reply::error(format!(
            "bad request: {e} (a JSON object with \"cmd\": reload, stats, flows, explain or config)"
        ))
    })
}

/// Answers one request.
pub fn handle(req: Request, shared: &Shared) -> Reply {
    match req {
        Request::Reload { path } => match shared.reload(path) {
            Ok(r) => Reply::ok(Body::Reloaded {
                epoch: r.epoch,
                build_ms: r.build_ms,
                policy: r.summary,
                path: r.path,
                warning: r.warning,
            }),
            Err(e) => Reply {
                ok: false,
                body: Body::Error {
                    error: format!("{e:#}"),
                    epoch: Some(shared.policy.load().epoch),
                    kept: Some("the running policy is unchanged"),
                },
            },
        },
        Request::Stats => match shared.stats() {
            Value::Object(m) => Reply::ok(Body::Stats(m)),
            _ => Reply::error("no counters"),
        },
        Request::Flows { proto, addr, port, limit } => {
            let proto = match proto.map(|p| p.number()).transpose() {
                Ok(p) => p,
                Err(e) => return Reply::error(format!("bad request: {e}")),
            };
            let limit = match limit {
                None => protocol::DEFAULT_FLOWS,
                Some(0) => return Reply::error("bad request: \"limit\" must be a positive integer"),
                Some(n) => n.min(protocol::MAX_FLOWS),
            };
            flows(FlowFilter { proto, addr, port, limit: limit as usize }, shared)
        }
        Request::Explain { flow, icmp } => match Flow::parse(&flow, icmp.as_deref()) {
            Ok(f) => {
                let policy = shared.policy.load();
                let d = policy.compiled.evaluate(&f);
                Reply::ok(Body::Explained { epoch: policy.epoch, decision: crate::policy::decision_json(&d) })
            }
            Err(e) => Reply::error(format!("bad flow: {e}")),
        },
        Request::Config => Reply::ok(Body::Config {
            path: shared.config_path.clone(),
            text: shared.config.to_toml(),
            policy: shared.policy_path.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            epoch: shared.policy.load().epoch,
        }),
    }
}

/// Asks every worker for its tracked flows matching `f`.
fn flows(f: FlowFilter, shared: &Shared) -> Reply {
    let mut out = Vec::new();
    let mut waiting = Vec::new();
    for w in &shared.workers {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if w.requests.try_send(worker::Request::Flows(f.clone(), tx)).is_ok() {
            waiting.push(rx);
        }
    }
    for rx in waiting {
        match rx.recv_timeout(Duration::from_secs(2)) {
            Ok(mut v) => out.append(&mut v),
            Err(_) => return Reply::error("a worker did not answer in 2 s"),
        }
    }
    out.truncate(f.limit);
    Reply::ok(Body::Flows { count: out.len(), flows: out })
}

/// Sends one request to the daemon at `path` and returns its reply.
/// `req` is a [`Request`], or any JSON value (to test what the daemon makes of one).
pub fn request(path: &Path, req: &impl Serialize) -> anyhow::Result<Value> {
    let mut conn = UnixStream::connect(path).with_context(|| {
        format!("connecting to {} (is `margay run` running, and are you root?)", path.display())
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    // The daemon may answer and close before it reads the request (a refused peer): the
    // write then fails with a broken pipe, but the answer is waiting, so it is read anyway.
    let sent = conn.write_all(&line);
    let mut reader = BufReader::new(conn);
    let mut answer = String::new();
    let read = reader.read_line(&mut answer);
    if answer.is_empty() {
        sent.context("sending the request")?;
        read.context("reading the reply")?;
        bail!("the daemon closed the connection without a reply");
    }
    serde_json::from_str(&answer).context("the reply is not JSON")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Past [`MAX_CLIENTS`] open connections, a new one gets an error reply at once; a place
    /// freed is taken again.
    #[test]
    fn concurrent_connections_are_capped() {
        let dir = std::env::temp_dir().join(format!("margay-ctl-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cap.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        // Each client is held until it closes: it says "hi", then reads to the end.
        let handle = |mut c: UnixStream| {
            let _ = c.write_all(b"hi\n");
            let _ = std::io::copy(&mut c, &mut std::io::sink());
        };
        let acceptor = std::thread::spawn(move || {
            accept(&listener, &|| stopped.load(Ordering::Relaxed), Arc::new(handle))
        });
        let first_line = |c: &UnixStream| {
            let mut line = String::new();
            BufReader::new(c).read_line(&mut line).unwrap();
            line
        };
        let mut open: Vec<UnixStream> = (0..MAX_CLIENTS)
            .map(|_| {
                let c = UnixStream::connect(&path).unwrap();
                assert_eq!(first_line(&c), "hi\n");
                c
            })
            .collect();
        let refused = UnixStream::connect(&path).unwrap();
        assert!(first_line(&refused).contains("too many control connections"));
        drop(open.pop());
        // The freed place is taken again (the acceptor may take a moment to see it free).
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let served = loop {
            let c = UnixStream::connect(&path).unwrap();
            if first_line(&c) == "hi\n" {
                open.push(c);
                break true;
            }
            if std::time::Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(served, "a freed place was not taken again");
        stop.store(true, Ordering::Relaxed);
        drop(open);
        let _ = UnixStream::connect(&path);
        acceptor.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_request_that_is_not_utf8_or_not_json_gets_an_answer() {
        let err = |line: &[u8]| match parse_request(line) {
            Err(r) => serde_json::to_value(&r).unwrap()["error"].as_str().unwrap().to_owned(),
            Ok(req) => panic!("{req:?}"),
        };
        assert!(err(b"\xff\xfe{\"cmd\": \"stats\"}\n").contains("not UTF-8 (invalid byte at offset 0)"));
        assert!(err(b"{\"cmd\": \"st\xc3\"}\n").contains("not UTF-8"));
        assert!(err(b"stats\n").contains("bad request"));
        assert_eq!(parse_request(b"{\"cmd\": \"stats\"}\n").unwrap(), Request::Stats);
    }

    /// A control socket path naming something that is not a socket (a regular file, say) is an
    /// error, and the file stays: it was deleted and replaced once.
    #[test]
    fn a_path_that_is_not_a_socket_is_not_replaced() {
        let dir = std::env::temp_dir().join(format!("margay-ctl-path-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("not-a-socket");
        std::fs::write(&path, "keep me").unwrap();
        let e = Server::bind(&path).unwrap_err().to_string();
        assert!(e.contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
        // A stale socket (no daemon behind it) is replaced, as before.
        let sock = dir.join("stale.sock");
        drop(UnixListener::bind(&sock).unwrap());
        let server = Server::bind(&sock).unwrap();
        server.remove();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A daemon that answers and closes without reading (as for a refused peer): the client
    /// still gets the answer, even when its own write fails because the socket closed first.
    #[test]
    fn an_answer_sent_before_the_request_was_read_is_not_lost() {
        let dir = std::env::temp_dir().join(format!("margay-ctl-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ctl.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            reply(&mut conn, &Reply::error("permission denied")).unwrap();
        });
        // Larger than the socket's buffers, so the write is still going when the server closes.
        let req = json!({"cmd": "stats", "pad": "x".repeat(4 << 20)});
        let got = request(&path, &req);
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(got.unwrap(), json!({"ok": false, "error": "permission denied"}));
    }
}
