//! Servers the tests check: a TCP listener and a scriptable HTTP server. Each stops (its
//! port closes and its connections end) when dropped.

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
    task::{JoinHandle, JoinSet},
};

/// A listener on 127.0.0.1 that accepts and closes every connection.
pub struct TcpServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpServer {
    /// Listens on `port` (0: an ephemeral one). SO_REUSEADDR so a test can stop a server
    /// and start it again on the same port.
    pub fn start(port: u16) -> Self {
        let listener = listen(port);
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        Self { addr, task }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the HTTP server does once it has read a request.
#[derive(Clone, Copy, Debug)]
pub enum Reply {
    /// `HTTP/1.1 {status} ...` and an empty body.
    Status(u16),
    /// A line that is not HTTP.
    Garbage,
    /// 4 KiB without a line end, then nothing (the connection stays open).
    Endless,
    /// Nothing at all; the connection stays open.
    Silent,
    /// Closes the connection without a byte.
    Close,
}

/// An HTTP/1.1 server on 127.0.0.1 that records every request head it reads and answers
/// as its current [`Reply`] says.
pub struct HttpServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    reply: Arc<Mutex<Reply>>,
    task: JoinHandle<()>,
}

impl HttpServer {
    pub fn start(reply: Reply) -> Self {
        let listener = listen(0);
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let reply = Arc::new(Mutex::new(reply));
        let (recorded, current) = (requests.clone(), reply.clone());
        let task = tokio::spawn(async move {
            // Connections live in the set, so aborting this task ends them too.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let reply = *current.lock().unwrap();
                connections.spawn(serve(stream, reply, recorded.clone()));
                while connections.try_join_next().is_some() {}
            }
        });
        Self {
            addr,
            requests,
            reply,
            task,
        }
    }

    pub fn set_reply(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    /// Request heads read so far, in order.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, reply: Reply, recorded: Arc<Mutex<Vec<String>>>) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    recorded
        .lock()
        .unwrap()
        .push(String::from_utf8_lossy(&head).into_owned());
    let answer = match reply {
        Reply::Status(status) => {
            format!("HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\n\r\n").into_bytes()
        }
        Reply::Garbage => b"SSH-2.0-OpenSSH_9.2\r\n".to_vec(),
        Reply::Endless => vec![b'x'; 4096],
        Reply::Silent => Vec::new(),
        Reply::Close => return,
    };
    let _ = stream.write_all(&answer).await;
    if matches!(reply, Reply::Endless | Reply::Silent) {
        std::future::pending::<()>().await;
    }
}

fn listen(port: u16) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket
        .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .unwrap();
    socket.listen(128).unwrap()
}

/// A port on 127.0.0.1 nothing listens on (it was bound a moment ago, then released).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
