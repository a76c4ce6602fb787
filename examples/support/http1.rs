//! A bare keep-alive HTTP/1.1 client over raw TCP for the load examples (flood, soak):
//! no client library between the figures and the wire.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One keep-alive HTTP/1.1 connection.
pub(crate) struct Conn {
    addr: String,
    from: Option<std::net::IpAddr>,
    stream: Option<BufReader<TcpStream>>,
}

impl Conn {
    /// A connection to `addr` (`host:port`), from the local address `from` if given; it
    /// is made on the first request.
    pub(crate) fn new(addr: String, from: Option<std::net::IpAddr>) -> Self {
        Self {
            addr,
            from,
            stream: None,
        }
    }

    /// `GET path` with `key` as a bearer token; the status, or 0 when the connection
    /// failed (it is made again on the next call).
    pub(crate) async fn get(&mut self, path: &str, key: &str) -> u16 {
        self.request("GET", path, key, None).await.0
    }

    /// `method path` with `key` as a bearer token and `body` as JSON: the status and the
    /// response body, or 0 and nothing when the connection failed (it is made again on
    /// the next call).
    #[allow(dead_code)] // not every example sends bodies
    pub(crate) async fn request(
        &mut self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<&[u8]>,
    ) -> (u16, Vec<u8>) {
        match self.try_request(method, path, key, body).await {
            Ok(answer) => answer,
            Err(_) => {
                self.stream = None;
                (0, Vec::new())
            }
        }
    }

    async fn try_request(
        &mut self,
        method: &str,
        path: &str,
        key: &str,
        body: Option<&[u8]>,
    ) -> std::io::Result<(u16, Vec<u8>)> {
        if self.stream.is_none() {
            let s = match self.from {
                None => TcpStream::connect(&self.addr).await?,
                Some(ip) => {
                    let to: std::net::SocketAddr =
                        self.addr.parse().map_err(std::io::Error::other)?;
                    let socket = if ip.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    socket.bind((ip, 0).into())?;
                    socket.connect(to).await?
                }
            };
            s.set_nodelay(true)?;
            self.stream = Some(BufReader::new(s));
        }
        let conn = self.stream.as_mut().unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {key}\r\n",
            self.addr
        )
        .into_bytes();
        if let Some(body) = body {
            req.extend_from_slice(
                format!(
                    "content-type: application/json\r\ncontent-length: {}\r\n",
                    body.len()
                )
                .as_bytes(),
            );
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body.unwrap_or_default());
        conn.get_mut().write_all(&req).await?;
        let mut line = String::new();
        conn.read_line(&mut line).await?;
        let status = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut length = 0usize;
        let mut close = false;
        loop {
            line.clear();
            if conn.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if l == "connection: close" {
                close = true;
            }
        }
        let mut body = vec![0; length];
        conn.read_exact(&mut body).await?;
        if close {
            self.stream = None;
        }
        Ok((status, body))
    }
}
