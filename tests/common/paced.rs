//! A TCP proxy on loopback that paces a WebSocket client's reading: the server's bytes reach
//! the client as fast as they come, at a set rate, or not at all, so that a test sees what the
//! server does with a slow or stalled client. (Faults between a node and Redis, cut, held,
//! refused or delayed connections, are tests/common/proxy.rs's.)

/// How a [`PacedProxy`] passes the server's bytes on to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// As fast as they come.
    Free,
    /// At most `bytes` per `every` (one read of the server's socket per tick): a client that
    /// reads slowly but steadily.
    Rate {
        bytes: usize,
        every: std::time::Duration,
    },
    /// Not at all: the proxy stops reading the server's socket (a client that stopped
    /// reading), until the pace changes.
    Stalled,
}

/// A TCP proxy on 127.0.0.1 in front of a server, for one client connection: the client's
/// bytes go through as they come, the server's at the [`Pace`] the test sets (and may change
/// at any time). Its socket to the server has a small receive buffer, so the pace reaches the
/// server's writes instead of filling a kernel buffer.
pub struct PacedProxy {
    pub addr: std::net::SocketAddr,
    pace: tokio::sync::watch::Sender<Pace>,
    task: tokio::task::JoinHandle<()>,
}

impl PacedProxy {
    /// Listens for one client and forwards it to `target`.
    pub async fn start(target: std::net::SocketAddr, pace: Pace) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (tx, mut rx) = tokio::sync::watch::channel(pace);
        let task = tokio::spawn(async move {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .set_recv_buffer_size(16 * 1024)
                .expect("receive buffer");
            let Ok(server) = socket.connect(target).await else {
                return;
            };
            let (mut client_read, mut client_write) = client.into_split();
            let (mut server_read, mut server_write) = server.into_split();
            let upstream = tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                let _ = server_write.shutdown().await;
            });
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let pace = *rx.borrow_and_update();
                let limit = match pace {
                    Pace::Stalled => {
                        if rx.changed().await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Pace::Free => buf.len(),
                    Pace::Rate { bytes, every } => {
                        tokio::time::sleep(every).await;
                        bytes.min(buf.len())
                    }
                };
                let n = tokio::select! {
                    read = server_read.read(&mut buf[..limit]) => match read {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    },
                    changed = rx.changed() => {
                        if changed.is_err() {
                            break;
                        }
                        continue;
                    }
                };
                if client_write.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            let _ = client_write.shutdown().await;
            upstream.abort();
        });
        Self {
            addr,
            pace: tx,
            task,
        }
    }

    /// Changes how the server's bytes go through, from now on.
    pub fn pace(&self, pace: Pace) {
        self.pace.send_replace(pace);
    }

    /// `ws://` + the proxy's address + `path`.
    pub fn ws(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }
}

impl Drop for PacedProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
