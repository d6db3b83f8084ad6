//! A TCP fault proxy for chaos tests: put it between a client and a server and switch it
//! between passing bytes, cutting every connection, and stalling them.
//!
//! - [`Mode::Pass`]: bytes flow both ways.
//! - [`Mode::Cut`]: open connections are shut down at once and new ones are closed as soon
//!   as they are accepted (the peer sees a connection reset or EOF, as when a link drops).
//! - [`Mode::Stall`]: connections stay open and new ones are accepted, but no byte moves
//!   in either direction until the mode changes (a half-open link: requests go unanswered,
//!   so only the client's timeouts notice). Bytes already read are held and forwarded on
//!   [`FaultProxy::restore`], as a congested network would deliver them late.
//!
//! One thread accepts and two threads pump each connection (blocking I/O, test-sized).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use anyhow::Result;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward bytes both ways.
    Pass,
    /// Close every connection; accept and close new ones.
    Cut,
    /// Keep connections open but move no bytes.
    Stall,
}

struct State {
    mode: Mode,
    upstream: SocketAddr,
    /// Both sockets of every live connection (by connection number), so a cut can shut
    /// them down.
    open: Vec<(u64, TcpStream)>,
    accepted: u64,
}

/// A running proxy; it stops accepting when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1:0 and forwards to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            mode: Mode::Pass,
            upstream,
            open: Vec::new(),
            accepted: 0,
        }));
        let weak = Arc::downgrade(&state);
        thread::spawn(move || {
            for client in listener.incoming() {
                let Some(state) = weak.upgrade() else { return };
                if let Ok(client) = client {
                    accept(&state, client);
                }
            }
        });
        Ok(FaultProxy { addr, state })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where new connections go (e.g. a restarted server on another port).
    pub fn set_upstream(&self, upstream: SocketAddr) {
        self.lock().upstream = upstream;
    }

    /// Connections accepted so far (including the ones closed by a cut).
    pub fn accepted(&self) -> u64 {
        self.lock().accepted
    }

    /// Switches mode; a cut shuts down every open connection before returning.
    pub fn set(&self, mode: Mode) {
        let mut st = self.lock();
        st.mode = mode;
        if mode == Mode::Cut {
            for (_, s) in st.open.drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }

    /// Back to [`Mode::Pass`].
    pub fn restore(&self) {
        self.set(Mode::Pass);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.set(Mode::Cut);
        // Wake the accept loop so it sees the proxy is gone.
        let _ = TcpStream::connect(self.addr);
    }
}

fn accept(state: &Arc<Mutex<State>>, client: TcpStream) {
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    st.accepted += 1;
    let id = st.accepted;
    if st.mode == Mode::Cut {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let upstream = st.upstream;
    drop(st);
    let Ok(server) = TcpStream::connect(upstream) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let clones = (|| {
        Ok::<_, std::io::Error>((
            client.try_clone()?,
            server.try_clone()?,
            client.try_clone()?,
            server.try_clone()?,
        ))
    })();
    let Ok((c_read, s_read, c_reg, s_reg)) = clones else {
        return;
    };
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    if st.mode == Mode::Cut {
        // Cut while connecting upstream.
        let _ = client.shutdown(Shutdown::Both);
        let _ = server.shutdown(Shutdown::Both);
        return;
    }
    st.open.extend([(id, c_reg), (id, s_reg)]);
    drop(st);
    let (s1, s2) = (state.clone(), state.clone());
    thread::spawn(move || pump(&s1, id, c_read, server));
    thread::spawn(move || pump(&s2, id, s_read, client));
}

/// Copies `from` to `to` while the mode allows; on EOF or error closes both.
fn pump(state: &Mutex<State>, id: u64, mut from: TcpStream, mut to: TcpStream) {
    let mode = || state.lock().unwrap_or_else(|p| p.into_inner()).mode;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        while mode() == Mode::Stall {
            thread::sleep(Duration::from_millis(5));
        }
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Bytes read just as a stall began are held until it ends.
        while mode() == Mode::Stall {
            thread::sleep(Duration::from_millis(5));
        }
        if mode() == Mode::Cut || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    st.open.retain(|(i, _)| *i != id);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                thread::spawn(move || {
                    let mut r = s.try_clone().unwrap();
                    let mut w = s;
                    let _ = std::io::copy(&mut r, &mut w);
                });
            }
        });
        addr
    }

    fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got)?;
        Ok(got)
    }

    #[test]
    fn pass_cut_stall_restore() {
        let proxy = FaultProxy::start(echo_server()).unwrap();
        let mut a = TcpStream::connect(proxy.addr()).unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(roundtrip(&mut a, b"one").unwrap(), b"one");

        proxy.set(Mode::Cut);
        assert!(
            roundtrip(&mut a, b"two").is_err(),
            "open connection survives a cut"
        );
        let mut b = TcpStream::connect(proxy.addr()).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(
            roundtrip(&mut b, b"x").is_err(),
            "new connection passes during a cut"
        );

        proxy.restore();
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        assert_eq!(roundtrip(&mut c, b"three").unwrap(), b"three");

        proxy.set(Mode::Stall);
        c.write_all(b"held").unwrap();
        let mut got = [0u8; 4];
        let e = c.read_exact(&mut got).unwrap_err();
        assert!(matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ));
        proxy.restore();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"held", "held bytes are delivered after the stall");
        assert_eq!(proxy.accepted(), 3);
    }
}
